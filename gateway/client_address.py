"""The client address: one rule for logs (`remote`), limits and forwarding (contract revision 3).

It is the peer's address, unless the peer is in GATEWAY_TRUSTED_PROXIES: then it is the
rightmost address of `X-Forwarded-For` that is not a trusted proxy. Only a trusted proxy's
appends are believed; anything further left was written by whoever called that proxy. An entry
that is not an address ends the walk (it cannot be a proxy's), and the last trusted hop is used.
Empty list elements (`a, , b`) are skipped, as RFC 9110 §5.6.1 asks of every list.

Entries may carry a port (`1.2.3.4:80`, `[2001:db8::1]:80`); IPv4-mapped IPv6 addresses are
read as the IPv4 address they carry, for the trust check and the result alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

from aiohttp import web

CLIENT_ADDRESS: Final = web.RequestKey("client_address", str)
Networks = Sequence[IPv4Network | IPv6Network]
Address = IPv4Address | IPv6Address

_BRACKETED: Final = re.compile(r"\[([^\[\]]+)\](?::[0-9]{1,5})?")
_V4_WITH_PORT: Final = re.compile(r"([0-9.]+):[0-9]{1,5}")


def parse_address(text: str) -> Address | None:
    """An address as a proxy or a socket writes it (with or without a port), else None."""
    text = text.strip()
    if (bracketed := _BRACKETED.fullmatch(text)) is not None:  # [v6] or [v6]:port
        text = bracketed[1]
    elif (with_port := _V4_WITH_PORT.fullmatch(text)) is not None:  # v4:port
        text = with_port[1]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Networks) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def is_trusted_proxy(peer: str, proxies: Networks) -> bool:
    """Whether the peer (as the socket reports it) is in GATEWAY_TRUSTED_PROXIES."""
    if not proxies:
        return False
    address = parse_address(peer)
    return address is not None and _trusted(address, proxies)


def client_address_from(peer: str, forwarded_for: Sequence[str], proxies: Networks) -> str:
    """The rule itself: `peer` as the socket reports it, the X-Forwarded-For header values in order."""
    hop = parse_address(peer)
    if hop is None or not proxies or not _trusted(hop, proxies):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        hop = address
        if not _trusted(address, proxies):
            break
    return str(hop)


def client_address(request: web.Request, proxies: Networks) -> str:
    """The client address of `request`, computed once per request."""
    known = request.get(CLIENT_ADDRESS)
    if known is None:
        known = client_address_from(request.remote or "", request.headers.getall("X-Forwarded-For", ()), proxies)
        request[CLIENT_ADDRESS] = known
    return known
