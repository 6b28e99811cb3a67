"""A resolver for the upstream connector that only ever returns public addresses.

The check and the connection use the same DNS answer: aiohttp connects to exactly the
addresses this resolver returns, so a second, different answer (DNS rebinding) cannot slip in
between the check and the connect. Lookups go through the event loop's shared, bounded c-ares
resolver (gateway.upstream_safety.Lookups), the same one registration checks use, so a flood of
slow names neither takes the default thread pool nor runs without bound.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.upstream_safety import (
    LookupFailed, Lookups, address_is_public, literal_address, shared_lookups,
)

_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class UpstreamRefused(OSError):
    """The upstream resolves only to non-public addresses (→ 502)."""


class PublicOnlyResolver(AbstractResolver):
    """`lookups` defaults to the running loop's shared one (looked up at each call, so a resolver
    built before the loop runs, or reused by a test on another loop, still finds its own).

    `allow_private` (GATEWAY_ALLOW_PRIVATE_UPSTREAMS) keeps every answer, but the lookups stay the
    bounded, asynchronous ones: a slow name must not stall upstream calls in a lab setup either."""

    def __init__(self, lookups: Lookups | None = None, *, allow_private: bool = False) -> None:
        self._lookups = lookups
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await (self._lookups or shared_lookups()).resolve(host, port, family)
        except LookupFailed as exc:
            raise OSError(None, str(exc)) from None  # aiohttp turns this into a DNS connect error
        public = [ResolveResult(hostname=host, host=a.host, port=a.port, family=a.family, proto=0,
                                flags=_NUMERIC)
                  for a in found if self._allow_private or address_is_public(a.host)]
        if not public:
            raise UpstreamRefused(f"upstream {host!r} is not a public address")
        return public

    async def close(self) -> None:
        """Nothing of its own to close: the shared lookups outlive one connector."""


def literal_address_refused(host: str) -> bool:
    """aiohttp skips the resolver for IP literals, so those are checked before connecting."""
    literal = literal_address(host)
    return literal is not None and not address_is_public(literal)


__all__ = ["PublicOnlyResolver", "UpstreamRefused", "literal_address_refused"]
