"""Vendor-chosen upstream URLs must not reach the gateway's own network.

Unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS is on, a target that is, or resolves to, a loopback,
private, link-local (169.254.169.254 included), multicast, unspecified or otherwise non-global
address is refused; IPv4-mapped IPv6 addresses are judged by their IPv4 part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from yarl import URL

RESOLVE_TIMEOUT = 2.0


class UnsafeUpstream(ValueError):
    pass


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    return [str(info[4][0]) for info in infos]


async def check_registration_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose host is, or now resolves to, a non-global address.

    A name that does not resolve is accepted: it is checked again at request time.
    """
    if allow_private:
        return
    parsed = URL(url)
    host = (parsed.host or "").strip("[]")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, parsed.port or 443)
        except (OSError, asyncio.TimeoutError, UnicodeError):
            return
    for address in addresses:
        if not address_is_public(address):
            raise UnsafeUpstream("points at a private, loopback or link-local address")
