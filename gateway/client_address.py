"""The client address: one rule for logs (`remote`), limits and forwarding (contract revision 3).

It is the peer's address, unless the peer is in GATEWAY_TRUSTED_PROXIES: then it is the
rightmost address of `X-Forwarded-For` that is not a trusted proxy. Only a trusted proxy's
appends are believed; anything further left was written by whoever called that proxy. An entry
that is not an address ends the walk (it cannot be a proxy's), and the last trusted hop is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

from aiohttp import web

CLIENT_ADDRESS: Final = web.RequestKey("client_address", str)
Networks = Sequence[IPv4Network | IPv6Network]


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPv4Address | IPv6Address, proxies: Networks) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def client_address_from(peer: str, forwarded_for: Sequence[str], proxies: Networks) -> str:
    """The rule itself: `peer` as the socket reports it, the X-Forwarded-For header values in order."""
    hop = _parse(peer)
    if hop is None or not proxies or not _trusted(hop, proxies):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",")]
    for entry in reversed(entries):
        address = _parse(entry)
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
