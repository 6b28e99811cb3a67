"""What every Redis topology must do for the gateway, written once and run against each
(tests/proxy/test_redis_sentinel.py, tests/proxy/test_redis_cluster.py): exact limits from one
node and from three, heartbeats (a transaction), the cache's entries, single flight, stale-lock
release and purge across nodes, and the health-check lease. Every scenario uses fresh random
ids, so none depends on another's keys."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from gateway import metrics
from gateway.proxy.breaker import Breakers
from gateway.proxy.cache import ENTRY_PREFIX, LOCK_PREFIX, cache_key
from gateway.proxy.probes import HealthProber
from gateway.proxy.ratelimit import RateLimiter
from gateway.redis_link import RedisLink, RedisUnavailable
from tests.proxy.test_cache import key_inputs, make_route, node, response

LinkFactory = Callable[..., RedisLink]
WINDOW = 3600
# Mid-window: a count under this clock never straddles a boundary.
FIXED_NOW = math.floor(time.time() / WINDOW) * WINDOW + WINDOW / 2


def fixed_clock(now: float = FIXED_NOW) -> Callable[[], float]:
    return lambda: now


def fallbacks() -> dict[str, float]:
    return {mode: metrics.REGISTRY.get_sample_value("gateway_rate_limit_fallback_total", {"mode": mode}) or 0.0
            for mode in ("local", "open", "closed")}


async def exact_limit(links: LinkFactory, url: str) -> None:
    """300 concurrent checks of a limit of 100: exactly 100 pass, each with its own count."""
    limiter = RateLimiter(links(url), clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    before = fallbacks()
    decisions = await asyncio.gather(*(limiter.check(route, space, 100, WINDOW) for _ in range(300)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 100
    assert sorted(d.remaining for d in allowed) == list(range(100))
    assert fallbacks() == before  # every decision came from Redis


async def three_nodes_share_one_limit(links: LinkFactory, url: str) -> None:
    nodes = [RateLimiter(links(url), clock=fixed_clock()) for _ in range(3)]
    route, space = uuid.uuid4(), uuid.uuid4()
    before = fallbacks()
    decisions = await asyncio.gather(*(nodes[i % 3].check(route, space, 100, WINDOW) for i in range(600)))
    assert sum(d.allowed for d in decisions) == 100
    assert fallbacks() == before
    assert (await nodes[1].check(route, uuid.uuid4(), 100, WINDOW)).allowed  # another space: its own count


async def heartbeats(links: LinkFactory, url: str) -> None:
    """The live-node set: a transaction (ZADD, ZREMRANGEBYSCORE, ZCARD, EXPIRE) on one key."""
    nodes = [RateLimiter(links(url)) for _ in range(3)]
    counts = [await limiter.beat(interval=0.5) for limiter in nodes]
    await asyncio.sleep(1.6)  # beats of other tests (interval 0.5) have aged out now
    counts = [await limiter.beat(interval=0.5) for limiter in nodes]
    assert counts[-1] == 3 and nodes[-1].live_nodes == 3
    await nodes[0].leave()
    assert await nodes[1].beat(interval=0.5) == 2


async def cache_across_nodes(links: LinkFactory, url: str) -> None:
    """Entries written by one node are read by another; misses coalesce across nodes."""
    here, there = node(links(url)), node(links(url))
    key = cache_key(**key_inputs(make_route()))
    assert await there.get(key) is None
    await here.put(key, response(b"from here"))
    found = await there.get(key)
    assert found is not None and found.body == b"from here"

    # Single flight: `here` leads; `there`, another node, waits on the Redis lock and then
    # reads the leader's answer instead of fetching.
    other = cache_key(**key_inputs(make_route()))
    async with here.flight(other) as leading:
        assert leading.leader
        assert await here.link.call(lambda r: r.exists(LOCK_PREFIX + other)) == 1

        async def follow() -> tuple[bool, bytes | None]:
            async with there.flight(other) as following:
                entry = await there.get(other)
                return following.leader, entry.body if entry else None

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.1)
        assert not follower.done()  # polling for the leader's entry
        await here.put(other, response(b"fetched once"))
    assert await follower == (False, b"fetched once")
    assert await here.link.call(lambda r: r.exists(LOCK_PREFIX + other)) == 0  # released


async def stale_locks_released(links: LinkFactory, url: str) -> None:
    """Locks whose release failed are released later in one call; on a cluster their keys are
    on many slots (one script per slot), and a lock another node holds now is left alone."""
    link = links(url)
    cache = node(link)
    keys = [cache_key(**key_inputs(make_route())) for _ in range(40)]
    tokens = {key: secrets.token_hex(16) for key in keys}
    for key in keys:
        await link.call(lambda r, k=key: r.set(LOCK_PREFIX + k, tokens[k], px=10_000))
    taken_over = keys[0]
    await link.call(lambda r: r.set(LOCK_PREFIX + taken_over, "another node's token", px=10_000))
    cache._unreleased = {key: (tokens[key], time.monotonic() + 10) for key in keys}
    await cache._release_unreleased()
    assert cache._unreleased == {}
    for key in keys[1:]:
        assert await link.call(lambda r, k=key: r.exists(LOCK_PREFIX + k)) == 0
    assert await link.call(lambda r: r.get(LOCK_PREFIX + taken_over)) == b"another node's token"


async def purge_everywhere(links: LinkFactory, url: str) -> None:
    here, fresh = node(links(url)), node(links(url))
    purged, kept = make_route(), make_route()
    purged_keys = [cache_key(**key_inputs(purged, path=f"/{i}")) for i in range(60)]
    kept_keys = [cache_key(**key_inputs(kept, path=f"/{i}")) for i in range(5)]
    for key in [*purged_keys, *kept_keys]:
        await here.put(key, response())
    assert await here.purge_service(purged.service_id) == 60
    for key in purged_keys:
        assert await here.link.call(lambda r, k=key: r.exists(ENTRY_PREFIX + k)) == 0
        assert await fresh.get(key) is None
    assert all([await fresh.get(key) is not None for key in kept_keys])
    assert await here.purge_service(purged.service_id) == 0


async def health_check_lease(links: LinkFactory, url: str) -> None:
    """One prober in the deployment: SET NX PX to take the lease, a script to renew it."""
    probers = [HealthProber(None, None, links(url), None, None, Breakers(5, 30))  # type: ignore[arg-type]
               for _ in range(2)]
    held = [await prober._hold_lease() for prober in probers]
    assert sorted(held) == [False, True]
    holder, other = (probers[0], probers[1]) if held[0] else (probers[1], probers[0])
    assert await holder._hold_lease() and not await other._hold_lease()  # renewed, still held
    await holder.close()
    assert await other._hold_lease()
    await other.close()


SCENARIOS: list[Callable[[LinkFactory, str], Any]] = [
    exact_limit, three_nodes_share_one_limit, heartbeats, cache_across_nodes, stale_locks_released,
    purge_everywhere, health_check_lease]



async def broken_connections_are_dropped(links: LinkFactory, url: str, kill_clients: Callable[[], int]) -> None:
    """As after a restart: every pooled connection broken. The first call fails (and pauses the
    link); RedisLink then closes the other idle ones (per node on a cluster), so that after the
    pause eight calls at once all reconnect instead of failing one by one."""
    link = links(url, timeout=1.0)
    await asyncio.gather(*(link.call(lambda r: r.blpop(["pgw:test:nothing"], timeout=0.05)) for _ in range(8)))
    assert kill_clients() >= 8
    try:
        await link.call(lambda r: r.get("pgw:test:nothing"))
    except RedisUnavailable:
        pass
    else:
        raise AssertionError("a broken connection answered")
    deadline = time.monotonic() + 3
    while not link.usable():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*(link.call(lambda r: r.blpop(["pgw:test:nothing"], timeout=0.05))
                                     for _ in range(8)), return_exceptions=True)
    assert results == [None] * 8
    assert link.healthy
