"""A resolver for the upstream connector that only ever returns public addresses.

The check and the connection use the same DNS answer: aiohttp connects to exactly the
addresses this resolver returns, so a second, different answer (DNS rebinding) cannot slip in
between the check and the connect.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.upstream_safety import address_is_public


class UpstreamRefused(OSError):
    """The upstream resolves only to non-public addresses (→ 502)."""


class PublicOnlyResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if address_is_public(r["host"])]
        if not public:
            raise UpstreamRefused(f"upstream {host!r} is not a public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def literal_address_refused(host: str) -> bool:
    """aiohttp skips the resolver for IP literals, so those are checked before connecting."""
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address_is_public(host.strip("[]"))


__all__: list[Any] = ["PublicOnlyResolver", "UpstreamRefused", "literal_address_refused"]
