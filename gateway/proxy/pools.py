"""Fair upstream pools: how many proxied calls may be in flight to one upstream host, and who
gets the next free connection.

Per upstream host (scheme, host, port) there are `capacity` slots (GATEWAY_UPSTREAM_POOL_PER_HOST).
A proxied request holds one slot for its whole upstream exchange. The requests of one space may
hold at most `max(1, floor(share × capacity))` slots at once (GATEWAY_UPSTREAM_SPACE_SHARE).

    a slot is free and the space is under its share  → taken at once
    otherwise                                          → wait, at most `timeout` s (then PoolTimeout)

When a slot frees, it goes to the space that was served longest ago among those that have
waiters and are under their share (a space with no slot in this host's recent history counts as
served longest ago; between two of those, the one that started waiting first). That is a
round-robin over spaces, not first come, first served: a space holding its share, with a queue
of its own behind, delays another space's next request by at most one connection's turnover,
because the other space is ahead of it in the rotation the moment it asks.

aiohttp's connector queues waiters first in, first out and without a deadline; these pools take
its place as the queue (see gateway.proxy.runtime.upstream_session).

Every count is per gateway process. State exists only for hosts with holders or waiters, and
within a host only for spaces with holders or waiters: nothing a caller does grows it for good.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from yarl import URL

HostKey = tuple[str, str, int | None]


def host_key(target: URL) -> HostKey:
    """The pool an upstream URL belongs to: what aiohttp keys its connections by, minus TLS details."""
    return (target.scheme, (target.raw_host or "").lower(), target.port)


class PoolTimeout(Exception):
    """No slot of the host became free for the space within the pool timeout."""


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[Lease]
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Space:
    held: int = 0
    waiters: OrderedDict[_Waiter, None] = field(default_factory=OrderedDict)


@dataclass(eq=False, slots=True)
class _Host:
    held: int = 0
    queued: int = 0  # waiters of all spaces (cancelled ones still queued included)
    spaces: dict[Hashable, _Space] = field(default_factory=dict)
    # The rotation, in two parts: spaces that wait and were never served (in order of arrival),
    # then spaces served at least once, least recently served first.
    fresh: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    served: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)


class Lease:
    """One slot, held until `release()` (idempotent: a `finally` may call it whatever happened)."""

    __slots__ = ("_key", "_pools", "_released", "_space")

    def __init__(self, pools: UpstreamPools, key: HostKey, space: Hashable) -> None:
        self._pools, self._key, self._space, self._released = pools, key, space, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pools._release(self._key, self._space)


class UpstreamPools:
    def __init__(self, capacity: int, share: float, timeout: float) -> None:
        if capacity < 1 or not 0 < share <= 1:
            raise ValueError("capacity must be at least 1 and share in (0, 1]")
        self.capacity = capacity
        self.space_limit = max(1, math.floor(share * capacity))
        self.timeout = timeout
        self._hosts: dict[HostKey, _Host] = {}

    async def acquire(self, key: HostKey, space: Hashable) -> Lease:
        """A slot of `key` for a request of `space`; PoolTimeout past the timeout."""
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host()
        record = host.spaces.get(space)
        if record is None:
            record = host.spaces[space] = _Space()
        if host.held < self.capacity and record.held < self.space_limit:
            # A free slot the space may take means nobody eligible is waiting (each release
            # hands slots to eligible waiters at once), so taking it jumps no queue.
            return self._grant(key, host, space, record)

        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        record.waiters[waiter] = None
        host.queued += 1
        if record.held == 0 and space not in host.served:
            host.fresh[space] = None
        waiter.timer = loop.call_later(self.timeout, self._expire, key, space, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed a slot in the same instant the caller went away: pass it on.
                future.result().release()
            else:
                self._forget(key, space, waiter)
            raise

    def holding(self, key: HostKey, space: Hashable | None = None) -> int:
        """Slots held now (of one space, or of all): for tests and the bench."""
        host = self._hosts.get(key)
        if host is None:
            return 0
        if space is None:
            return host.held
        record = host.spaces.get(space)
        return record.held if record else 0

    def waiting(self, key: HostKey) -> int:
        host = self._hosts.get(key)
        return host.queued if host else 0

    @property
    def hosts(self) -> int:
        """Hosts with state (holders or waiters)."""
        return len(self._hosts)

    def _grant(self, key: HostKey, host: _Host, space: Hashable, record: _Space) -> Lease:
        host.held += 1
        record.held += 1
        host.fresh.pop(space, None)
        host.served[space] = None
        host.served.move_to_end(space)  # served just now: the end of the rotation
        return Lease(self, key, space)

    def _release(self, key: HostKey, space: Hashable) -> None:
        host = self._hosts[key]
        record = host.spaces[space]
        host.held -= 1
        record.held -= 1
        self._dispatch(key, host)
        self._tidy(key, host, space)

    def _dispatch(self, key: HostKey, host: _Host) -> None:
        """Hand free slots to waiters, one space at a time in rotation order."""
        while host.queued and host.held < self.capacity:
            space = self._next_space(host)
            if space is None:
                return
            record = host.spaces[space]
            while record.waiters:
                waiter, _ = record.waiters.popitem(last=False)
                host.queued -= 1
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():  # a cancelled caller's waiter may still be queued
                    waiter.future.set_result(self._grant(key, host, space, record))
                    break
            self._tidy(key, host, space)

    def _next_space(self, host: _Host) -> Hashable | None:
        # A fresh space holds nothing, so it is under its share. Among the served ones, those
        # skipped hold slots (at most `capacity` of them): the scan is short.
        for space in host.fresh:
            return space
        for space in host.served:
            record = host.spaces[space]
            if record.waiters and record.held < self.space_limit:
                return space
        return None

    def _expire(self, key: HostKey, space: Hashable, waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_exception(PoolTimeout())
        self._forget(key, space, waiter)

    def _forget(self, key: HostKey, space: Hashable, waiter: _Waiter) -> None:
        """A waiter leaves without a slot (timed out or cancelled): no trace of it remains."""
        if waiter.timer is not None:
            waiter.timer.cancel()
        host = self._hosts.get(key)
        record = host.spaces.get(space) if host else None
        if host is None or record is None:
            return
        if record.waiters.pop(waiter, False) is None:
            host.queued -= 1
        self._tidy(key, host, space)

    def _tidy(self, key: HostKey, host: _Host, space: Hashable) -> None:
        record = host.spaces.get(space)
        if record is not None and record.held == 0 and not record.waiters:
            del host.spaces[space]
            host.fresh.pop(space, None)
            host.served.pop(space, None)
        elif record is not None and not record.waiters:
            host.fresh.pop(space, None)
        if host.held == 0 and not host.spaces and self._hosts.get(key) is host:
            del self._hosts[key]
