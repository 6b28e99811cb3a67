"""GATEWAY_AUTH_FAILURES_PER_MINUTE: a client address that keeps presenting bad credentials.

Once a client address (gateway.client_address: the one rule) has presented that many
credentials that failed within the last 60 seconds, its further failing requests answer 429 with
`Retry-After` instead of 401. A request that authenticates is served as usual whatever its
address did before, and a request without credentials is not counted. The 429s count too: an
address that keeps failing stays refused until it slows below the limit.

Counted per gateway process, exactly over a sliding minute: each address keeps the times of its
last `limit` failures. Memory is bounded: addresses live in an LRU map weighed by the times they
hold (MEMORY_BYTES in all), so an attacker rotating source addresses only pushes out the oldest.

The API (/api/v1) and the proxy both authenticate through `identify_request`.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from cachetools import LRUCache

from auth.errors import Unauthenticated
from auth.identify import CallerLookups, identify
from auth.jwt import JwtVerifier
from auth.principal import Principal
from gateway.appkeys import SETTINGS
from gateway.client_address import client_address
from gateway.errors import RateLimited

WINDOW_SECONDS = 60.0
MEMORY_BYTES = 8 * 1024 * 1024
_ENTRY_BYTES = 96  # an address's key, its slot in the map and the array's own header
CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")


class _Failures:
    """The times of an address's last `limit` failures, as a ring once full."""

    __slots__ = ("next", "times")

    def __init__(self) -> None:
        self.times = array("d")
        self.next = 0  # once full: the slot of the oldest, overwritten by the next failure

    def size(self) -> int:
        return _ENTRY_BYTES + self.times.itemsize * len(self.times)


class AuthFailures:
    def __init__(self, per_minute: int, *, memory_bytes: int = MEMORY_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, per_minute)
        self._clock = clock
        budget = max(memory_bytes, 2 * (_ENTRY_BYTES + 8 * self.limit))  # one full address always fits
        self._addresses: LRUCache[str, _Failures] = LRUCache(budget, getsizeof=_Failures.size)

    def __len__(self) -> int:
        return len(self._addresses)

    def failed(self, address: str) -> int | None:
        """Record a failed credential of `address`: the seconds to put in Retry-After when it
        comes past the limit (its previous `limit` failures all within the minute), else None."""
        now = self._clock()
        entry = self._addresses.get(address) or _Failures()
        past_limit = False
        if len(entry.times) < self.limit:
            entry.times.append(now)  # entry.next stays 0: the oldest, once the ring is full
        else:
            past_limit = now - entry.times[entry.next] < WINDOW_SECONDS
            entry.times[entry.next] = now
            entry.next = (entry.next + 1) % self.limit
        self._addresses[address] = entry  # again: its weight may have grown; most recently used
        if not past_limit:
            return None
        # Until the oldest of the last `limit` failures, this one included, leaves the window.
        return max(1, math.ceil(entry.times[entry.next] + WINDOW_SECONDS - now))


class FailureCounter(Protocol):
    def failed(self, address: str) -> int | None: ...


def presents_credentials(request: web.Request) -> bool:
    return any(request.headers.get(name, "").strip() for name in CREDENTIAL_HEADERS)


async def identify_request(request: web.Request, verifier: JwtVerifier, lookups: CallerLookups,
                           failures: FailureCounter | None) -> Principal:
    """The request's caller (auth.identify), counting its failed credentials by client address."""
    try:
        return await identify(request.headers, verifier, lookups)
    except Unauthenticated:
        if failures is None or not presents_credentials(request):
            raise
        address = client_address(request, request.app[SETTINGS].trusted_proxies)
        retry_after = failures.failed(address)
        if retry_after is None:
            raise
    raise RateLimited(f"Too many failed credentials from this address; retry in {retry_after} s",
                      headers={"Retry-After": str(retry_after)})
