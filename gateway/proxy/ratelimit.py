"""Fixed-window rate limits per (route, space), shared by every node through Redis.

Windows are aligned to the clock (window_start = floor(now / window) * window, epoch seconds), so
vendors can read a limit as "N per window" and every node counts into the same key. Counting is a
Lua script (INCRBY, and the key's expiry in the same step); the checks of one event-loop turn go
to Redis as one pipeline, those of one key as one INCRBY.

While much of a window remains, a node reserves counts ahead for itself (`Reservations`): one
INCRBY takes a block of counts, handed out locally to the node's next requests, so a limit far
from being reached costs about one round trip per block rather than per turn. The block doubles
with each refill (the node's own demand) up to MAX_BLOCK, and is only taken while the remaining
quota is at least RESERVE_FACTOR blocks per live node; near the limit every request is counted in
Redis again. Redis never hands a count out twice, so no more than the limit passes in a window,
whatever the number of nodes. The price: a node that stops getting calls may leave up to one
block unused, at most 1 / RESERVE_FACTOR of what remained when it took it, and the window then
closes that much short of its limit.

Without Redis the count lives in process memory; when a configured Redis fails,
GATEWAY_RATE_LIMIT_FAILURE decides (`_fallback`, style.md §8).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import redis.asyncio as redis
from cachetools import TLRUCache
from redis.exceptions import NoScriptError

from gateway import metrics
from gateway.redis_link import PAUSE_AFTER_FAILURE, RedisLink, RedisUnavailable

KEY_PREFIX: Final = "pgw:rl:"
NODES_KEY: Final = "pgw:nodes"
# A key outlives its window by this much, so a node whose clock lags a little still counts into
# the live key instead of recreating it; after that nothing reads it again.
TTL_MARGIN_SECONDS: Final = 5
LOCAL_MAX_KEYS: Final = 100_000
FAILURE_MODES: Final = ("local", "open", "closed")
# Reservations: blocks start at FIRST_BLOCK counts and double with each refill up to MAX_BLOCK,
# and are taken only while RESERVE_FACTOR blocks per live node remain in the window.
FIRST_BLOCK: Final = 8
MAX_BLOCK: Final = 1024
RESERVE_FACTOR: Final = 100

# INCRBY, and EXPIRE when the key has no TTL yet (new key, or one left without expiry by anything
# unexpected), so no counter lives forever. Returns the count including these requests.
_INCR_SCRIPT: Final = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""

# The live-node set in one step: this node's beat, the nodes silent for 3 intervals dropped, the
# count of the rest, and an expiry so the set goes away on its own once every node is gone. A
# script on one key rather than a MULTI/EXEC pipeline: the same on one server, Sentinel and
# Cluster (redis-py's asyncio cluster transaction runs each queued command through a thread and
# an event loop of its own, where its first use leaves connections bound to a loop that ends).
_BEAT_SCRIPT: Final = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local live = redis.call('ZCARD', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return live
"""


class RateLimitUnavailable(Exception):
    """Redis is down and GATEWAY_RATE_LIMIT_FAILURE=closed: answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limit store unavailable")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds to the window's end, at least 1
    window: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f'"route";q={self.limit};w={self.window}',
            "RateLimit": f'"route";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset)
        return headers


def _window(now: float, window: int) -> tuple[int, int]:
    """(window_start, seconds to its end rounded up, at least 1)."""
    start = int(now // window) * window
    return start, max(1, math.ceil(start + window - now))


def _decision(count: int, limit: int, window: int, reset: int, announced: int | None = None) -> Decision:
    """`limit` is enforced; `announced` (default: the same) is what the headers call the limit."""
    return Decision(allowed=count <= limit, limit=limit if announced is None else announced,
                    remaining=max(0, limit - count), reset=reset, window=window)


class LocalCounter:
    """Per-process counters: bounded, each entry dropped when its window ends."""

    def __init__(self, clock: Callable[[], float], maxsize: int = LOCAL_MAX_KEYS) -> None:
        # key = (route, space, window, window_start): it expires at window_start + window. When
        # full the least recently used counter goes, which at worst lets that key start again.
        self._counts: TLRUCache[tuple[UUID, UUID, int, int], int] = TLRUCache(
            maxsize, ttu=lambda key, _value, _now: key[3] + key[2], timer=clock)

    def increment(self, route_id: UUID, space_id: UUID, window: int, start: int) -> int:
        # No await between read and write: one event loop makes this atomic.
        key = (route_id, space_id, window, start)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count


class _IncrBatcher:
    """Runs the counting script for every claim issued in one event-loop turn as ONE pipeline,
    the claims on one key merged into one INCRBY.

    A burst of a few hundred requests then costs one round trip instead of a few hundred, each
    waiting for a pooled connection: under load the calls stay well inside GATEWAY_REDIS_TIMEOUT
    instead of timing out and tripping the fallback. EVALSHA, and on NOSCRIPT (a Redis restart
    or SCRIPT FLUSH) the script is loaded and the batch sent again.
    """

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.sha = hashlib.sha1(_INCR_SCRIPT.encode()).hexdigest()
        # key → (ttl, [(size, future)]): each future gets the count its claim ends at.
        self._pending: dict[str, tuple[int, list[tuple[int, asyncio.Future[int]]]]] = {}

    def incr(self, key: str, ttl: int, size: int = 1) -> asyncio.Future[int]:
        """Claim `size` counts of `key`; the future gets the last of them (the total after it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        claims = self._pending.get(key)
        if claims is None:
            self._pending[key] = (ttl, [(size, future)])
        else:
            claims[1].append((size, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = list(self._pending.items()), {}
        asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[str, tuple[int, list[tuple[int, asyncio.Future[int]]]]]]) -> None:
        commands = [(key, ttl, sum(size for size, _ in claims)) for key, (ttl, claims) in batch]

        async def run(r: redis.Redis) -> list[int]:
            counts = await self._pipeline(r, commands)
            # NOSCRIPT from a server that lost the script (restarted, SCRIPT FLUSH; in a cluster,
            # a node that took over a slot): load it (on every primary of a cluster) and send
            # again only what was refused, since the rest has counted already, maybe on
            # another node.
            refused = [i for i, count in enumerate(counts) if isinstance(count, NoScriptError)]
            if refused:
                await r.script_load(_INCR_SCRIPT)
                for i, count in zip(refused, await self._pipeline(r, [commands[i] for i in refused]), strict=True):
                    counts[i] = count
            answered = []
            for count in counts:
                if isinstance(count, BaseException):
                    raise count
                answered.append(int(count))
            return answered

        try:
            totals = await self.link.call(run)
        except RedisUnavailable as exc:
            for _, (_, claims) in batch:
                for _, future in claims:
                    if not future.done():  # a caller that went away cancelled its own future
                        future.set_exception(exc)
            return
        for (_, (_, claims)), (_, _, size), total in zip(batch, commands, totals, strict=True):
            end = total - size  # the claims' counts follow one another, in the order they came
            for claimed, future in claims:
                end += claimed
                if not future.done():
                    future.set_result(end)

    async def _pipeline(self, r: redis.Redis, commands: list[tuple[str, int, int]]) -> list[int | BaseException]:
        """The totals, or each command's error. Not a transaction: in a cluster the keys are
        on several nodes, and redis-py's cluster pipeline splits the batch by node (one round
        trip to each) and follows MOVED and ASK for the commands that get them."""
        pipe = r.pipeline(transaction=False)
        for key, ttl, size in commands:
            # Not pipe.evalsha(): redis-py's cluster pipeline refuses that method (and only the
            # method: the command's key is found like EVAL's).
            pipe.execute_command("EVALSHA", self.sha, 1, key, ttl, size)
        result: list[int | BaseException] = await pipe.execute(raise_on_error=False)
        return result


WindowKey = tuple[UUID, UUID, int, int]  # (route, space, window, window start)


@dataclass(slots=True)
class _Block:
    next: int = 0  # the next count this node may hand out
    end: int = -1  # the last one it holds
    size: int = 0  # of the last refill
    refilling: bool = False


class Reservations:
    """The counts this node holds ahead, per live window key (module docstring)."""

    def __init__(self, clock: Callable[[], float], maxsize: int = LOCAL_MAX_KEYS) -> None:
        self._blocks: TLRUCache[WindowKey, _Block] = TLRUCache(
            maxsize, ttu=lambda key, _value, _now: key[3] + key[2], timer=clock)

    def take(self, key: WindowKey) -> int | None:
        """A count held for `key`, or None."""
        block = self._blocks.get(key)
        if block is None or block.next > block.end:
            return None
        block.next += 1
        return block.next - 1

    def size(self, key: WindowKey, limit: int, seen: int | None, nodes: int) -> int:
        """How many counts to claim beyond this request's: a block, or none near the limit, before
        the window's count is known, or while another refill of the key is on its way."""
        block = self._blocks.get(key)
        if seen is None or (block is not None and block.refilling):
            return 0
        size = FIRST_BLOCK if block is None or not block.size else min(MAX_BLOCK, 2 * block.size)
        if limit - seen < RESERVE_FACTOR * nodes * size:
            return 0
        if block is None:
            block = self._blocks[key] = _Block()
        block.refilling, block.size = True, size
        return size

    def refilled(self, key: WindowKey, first: int, last: int, limit: int) -> None:
        """Counts first..last (above the request's own) are this node's now."""
        block = self._blocks.get(key)
        if block is None:
            return
        block.refilling = False
        block.next, block.end = first, min(last, limit)

    def abandon(self, key: WindowKey) -> None:
        block = self._blocks.get(key)
        if block is not None:
            block.refilling = False


class RateLimiter:
    def __init__(self, link: RedisLink, failure_mode: str = "local",
                 clock: Callable[[], float] = time.time) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, not {failure_mode!r}")
        self.link = link
        self.failure_mode = failure_mode
        self.clock = clock
        self.local = LocalCounter(clock)
        # The last count Redis gave for each live window key: a fallback that starts mid-window
        # carries on from it instead of from zero (see `_fallback`).
        self.seen: TLRUCache[WindowKey, int] = TLRUCache(
            LOCAL_MAX_KEYS, ttu=lambda key, _value, _now: key[3] + key[2], timer=clock)
        self.node_id = uuid.uuid4().hex
        self.live_nodes = 1  # nodes seen by the last successful heartbeat (this one included)
        self._incr = _IncrBatcher(link) if link.client is not None else None
        self.reservations = Reservations(clock)

    async def check(self, route_id: UUID, space_id: UUID, limit: int, window: int) -> Decision:
        now = self.clock()
        start, reset = _window(now, window)
        if self._incr is None:  # single-node mode: REDIS_URL unset, nothing to count as fallback
            return _decision(self.local.increment(route_id, space_id, window, start), limit, window, reset)
        window_key = (route_id, space_id, window, start)
        held = self.reservations.take(window_key)
        if held is not None:
            return _decision(held, limit, window, reset)
        extra = self.reservations.size(window_key, limit, self.seen.get(window_key), self.live_nodes)
        key = f"{KEY_PREFIX}{route_id}:{space_id}:{window}:{start}"
        try:
            last = await self._incr.incr(key, window + TTL_MARGIN_SECONDS, 1 + extra)
        except RedisUnavailable:
            if extra:
                self.reservations.abandon(window_key)
            return self._fallback(route_id, space_id, limit, window, start, reset)
        except BaseException:  # cancelled: the claim may have counted, nothing was handed out
            if extra:
                self.reservations.abandon(window_key)
            raise
        count = last - extra  # this request's count; the ones after it are the block
        if extra:
            self.reservations.refilled(window_key, count + 1, last, limit)
        self.seen[window_key] = last
        return _decision(count, limit, window, reset)

    def _fallback(self, route_id: UUID, space_id: UUID, limit: int, window: int,
                  start: int, reset: int) -> Decision:
        """Redis is configured but did not answer: GATEWAY_RATE_LIMIT_FAILURE decides, counted."""
        metrics.RATE_LIMIT_FALLBACK.labels(self.failure_mode).inc()
        if self.failure_mode == "closed":
            raise RateLimitUnavailable(retry_after=max(1, math.ceil(PAUSE_AFTER_FAILURE)))
        if self.failure_mode == "open":
            # Nothing was counted; report the window as if this were its first request.
            return _decision(1, limit, window, reset)
        # local: this node's share of what the window had left when Redis was last seen (all of
        # the limit in a window Redis never counted). The headers keep announcing the route's
        # limit (the policy did not change); Remaining is what this node still lets through.
        left = limit - self.seen.get((route_id, space_id, window, start), 0)
        share = max(0, -(-left // max(1, self.live_nodes)))
        count = self.local.increment(route_id, space_id, window, start)
        return _decision(count, share, window, reset, announced=limit)

    # --- node liveness, for the `local` failure mode ---------------------------------------

    async def beat(self, interval: float = 5.0) -> int:
        """Announce this node and count the live ones (one round trip); keeps the last count
        when Redis fails. A node is live if it beat within the last 3 intervals."""
        if self.link.client is None:
            return self.live_nodes
        now = self.clock()

        async def announce(r: redis.Redis) -> int:
            live: int = await r.eval(_BEAT_SCRIPT, 1, NODES_KEY, repr(now), self.node_id,
                                     repr(now - 3 * interval), max(1, math.ceil(3 * interval)))
            return live

        try:
            live = await self.link.call(announce)
        except RedisUnavailable:
            return self.live_nodes
        self.live_nodes = max(1, int(live))
        return self.live_nodes

    async def run_heartbeat(self, interval: float = 5.0) -> None:
        """Beat every `interval` seconds until cancelled."""
        while True:
            await self.beat(interval)
            await asyncio.sleep(interval)

    async def leave(self) -> None:
        """Remove this node from the live set on shutdown (best effort: it ages out anyway)."""
        if self.link.client is None:
            return
        try:
            await self.link.call(lambda r: r.zrem(NODES_KEY, self.node_id))
        except RedisUnavailable:
            pass
