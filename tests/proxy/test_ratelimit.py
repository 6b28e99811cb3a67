"""The rate limiter against real Redis servers: the shared one for counting, and servers of our
own (started here, stopped only by us) for outages, NOSCRIPT and recovery.

Every test counts under fresh random route ids, so nothing here depends on (or flushes) keys
of another test. Clocks are injected where a window boundary could make a count flaky."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as redis

from gateway import metrics
from gateway.dev import services as devservices
from gateway.proxy.ratelimit import KEY_PREFIX, MAX_BLOCK, Decision, RateLimiter, RateLimitUnavailable, _window
from gateway.redis_link import PAUSE_AFTER_FAILURE, RedisLink

# Mid-window for 60 s windows: a count under this clock can never straddle a boundary.
FIXED_NOW = math.floor(time.time() / 60) * 60 + 30.0
# Generous for the counting tests (a loaded CI host must not turn them into fallback tests);
# the production default (0.05 s) is exercised by the outage tests.
COUNTING_TIMEOUT = 2.0

LinkFactory = Callable[..., RedisLink]


def fixed_clock(now: float = FIXED_NOW) -> Callable[[], float]:
    return lambda: now


def fallbacks(mode: str) -> float:
    return metrics.REGISTRY.get_sample_value("gateway_rate_limit_fallback_total", {"mode": mode}) or 0.0


def all_fallbacks() -> dict[str, float]:
    return {mode: fallbacks(mode) for mode in ("local", "open", "closed")}


async def timed(check: Awaitable[Decision]) -> tuple[Decision, float]:
    started = time.perf_counter()
    decision = await check
    return decision, time.perf_counter() - started


@pytest.fixture
async def make_link() -> AsyncIterator[LinkFactory]:
    """RedisLinks closed at the end of the test (each is one gateway node's client)."""
    links: list[RedisLink] = []

    def make(url: str, timeout: float = COUNTING_TIMEOUT) -> RedisLink:
        link = RedisLink(url, timeout)
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()
        # RedisLink hands Redis a pool it built itself, so the client's aclose() leaves the pool's
        # connections open; close them here (a no-op once RedisLink.close does it).
        if link.client is not None:
            await link.client.connection_pool.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[devservices.LocalRedis]:
    """A redis-server of this test's own, which the test may stop."""
    server = devservices.start_redis()
    yield server
    server.stop()


async def test_exactly_limit_of_concurrent_checks_pass(redis_url: str, make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(redis_url), clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    before = all_fallbacks()

    decisions = await asyncio.gather(*(limiter.check(route, space, 100, 60) for _ in range(300)))

    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 100
    assert sorted(d.remaining for d in allowed) == list(range(100))
    assert all(d.remaining == 0 for d in decisions if not d.allowed)
    assert all_fallbacks() == before  # every decision came from Redis


async def test_three_nodes_share_one_limit(redis_url: str, make_link: LinkFactory) -> None:
    nodes = [RateLimiter(make_link(redis_url), clock=fixed_clock()) for _ in range(3)]
    route, space = uuid.uuid4(), uuid.uuid4()

    decisions = await asyncio.gather(*(nodes[i % 3].check(route, space, 100, 60) for i in range(600)))

    assert sum(d.allowed for d in decisions) == 100
    # Another space of the same route has its own count.
    assert (await nodes[0].check(route, uuid.uuid4(), 100, 60)).allowed


async def test_a_limit_far_from_its_end_is_counted_in_reserved_blocks(redis_url: str, make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(redis_url), clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    key = f"{KEY_PREFIX}{route}:{space}:60:{_window(FIXED_NOW, 60)[0]}"
    round_trips = 0
    counts: list[int] = []
    for _ in range(200):  # turns of 20 checks, as a busy node gets them
        before = await limiter.link.call(lambda r: r.get(key))
        decisions = await asyncio.gather(*(limiter.check(route, space, 1_000_000, 60) for _ in range(20)))
        after = await limiter.link.call(lambda r: r.get(key))
        round_trips += before != after
        counts += [1_000_000 - d.remaining for d in decisions]
    assert len(set(counts)) == 4000  # each count handed out once
    assert round_trips < 30  # blocks doubling up to MAX_BLOCK, not one INCRBY per turn (200)
    in_redis = int(await limiter.link.call(lambda r: r.get(key)))
    assert max(counts) <= in_redis <= 4000 + MAX_BLOCK  # what Redis counted covers every count given


async def test_three_nodes_with_reservations_pass_exactly_the_limit(redis_url: str, make_link: LinkFactory) -> None:
    # A limit large enough for blocks at first: they stop near the end, which is exact again.
    nodes = [RateLimiter(make_link(redis_url), clock=fixed_clock()) for _ in range(3)]
    for node in nodes:
        node.live_nodes = 3
    route, space, limit = uuid.uuid4(), uuid.uuid4(), 20_000
    allowed = 0
    for _ in range(30):
        decisions = await asyncio.gather(*(nodes[i % 3].check(route, space, limit, 60) for i in range(900)))
        allowed += sum(d.allowed for d in decisions)
    assert allowed == limit  # 27,000 checks: every node's demand used its blocks up


@pytest.mark.parametrize("backend", ["redis", "local"])
async def test_windows_are_aligned_to_the_clock(backend: str, redis_url: str, make_link: LinkFactory) -> None:
    now = [59.5]
    limiter = RateLimiter(make_link(redis_url if backend == "redis" else ""), clock=lambda: now[0])
    route, space = uuid.uuid4(), uuid.uuid4()

    first = await limiter.check(route, space, 2, 60)
    assert (first.allowed, first.remaining, first.reset, first.window) == (True, 1, 1, 60)
    assert (await limiter.check(route, space, 2, 60)).allowed
    assert not (await limiter.check(route, space, 2, 60)).allowed

    now[0] = 60.0  # a new window starts exactly on the epoch multiple
    fresh = await limiter.check(route, space, 2, 60)
    assert (fresh.allowed, fresh.remaining, fresh.reset) == (True, 1, 60)

    now[0] = 119.01  # reset is rounded up to whole seconds
    assert (await limiter.check(route, space, 2, 60)).reset == 1
    now[0] = 61.2
    assert (await limiter.check(route, space, 5, 10)).reset == 9


async def test_the_counter_key_expires(redis_url: str, make_link: LinkFactory,
                                       redis_client: redis.Redis) -> None:
    limiter = RateLimiter(make_link(redis_url))
    route = uuid.uuid4()

    await limiter.check(route, uuid.uuid4(), 10, 30)

    keys = [key async for key in redis_client.scan_iter(match=f"pgw:rl:{route}:*")]
    assert len(keys) == 1
    assert 30 <= await redis_client.ttl(keys[0]) <= 40
    assert int(await redis_client.get(keys[0])) == 1
    await redis_client.delete(*keys)


async def test_script_is_reloaded_after_script_flush(own_redis: devservices.LocalRedis,
                                                     make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(own_redis.url), clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    assert (await limiter.check(route, space, 5, 60)).remaining == 4
    before = all_fallbacks()

    admin = redis.Redis.from_url(own_redis.url)
    try:
        await admin.script_flush()
        decision = await limiter.check(route, space, 5, 60)
    finally:
        await admin.aclose()

    assert (decision.allowed, decision.remaining) == (True, 3)  # Redis still counts: 2nd request
    assert all_fallbacks() == before


def test_headers_of_an_allowed_and_a_refused_decision() -> None:
    allowed = Decision(allowed=True, limit=100, remaining=42, reset=17, window=60)
    assert allowed.headers() == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "42",
        "RateLimit-Reset": "17",
        "RateLimit-Policy": '"route";q=100;w=60',
        "RateLimit": '"route";r=42;t=17',
    }
    refused = Decision(allowed=False, limit=100, remaining=0, reset=17, window=60)
    assert refused.headers() == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "17",
        "RateLimit-Policy": '"route";q=100;w=60',
        "RateLimit": '"route";r=0;t=17',
        "Retry-After": "17",
    }


async def test_without_redis_limits_per_process_and_counts_no_fallback(make_link: LinkFactory) -> None:
    link = make_link("")
    assert not link.configured
    limiter = RateLimiter(link, failure_mode="closed", clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    before = all_fallbacks()

    decisions = [await limiter.check(route, space, 5, 60) for _ in range(8)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert decisions[-1].headers()["Retry-After"] == "30"
    assert all_fallbacks() == before  # single-node mode is not a fallback
    assert await limiter.beat() == 1


async def test_redis_down_local_mode_enforces_this_nodes_share(own_redis: devservices.LocalRedis,
                                                               make_link: LinkFactory) -> None:
    nodes = [RateLimiter(make_link(own_redis.url, 0.05), failure_mode="local", clock=fixed_clock())
             for _ in range(3)]
    for node in nodes:
        await node.beat()
    assert await nodes[0].beat() == 3
    own_redis.stop()
    route, space = uuid.uuid4(), uuid.uuid4()
    before = fallbacks("local")

    results = [await timed(nodes[0].check(route, space, 10, 60)) for _ in range(10)]

    decisions = [d for d, _ in results]
    assert sum(d.allowed for d in decisions) == math.ceil(10 / 3)
    assert decisions[0].limit == 10  # headers still announce the route's limit
    assert fallbacks("local") == before + 10
    assert max(elapsed for _, elapsed in results) < 0.05 + 0.15
    assert await nodes[0].beat() == 3  # the last count seen is kept while Redis is down


async def test_a_fallback_mid_window_carries_on_from_the_last_count_redis_gave(
        own_redis: devservices.LocalRedis, make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(own_redis.url, 0.05), failure_mode="local", clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    assert [(await limiter.check(route, space, 10, 60)).allowed for _ in range(8)] == [True] * 8
    own_redis.stop()
    before = fallbacks("local")
    # Redis had counted 8 of 10: this node (alone) may pass 2 more, not 10 from zero.
    assert [(await limiter.check(route, space, 10, 60)).allowed for _ in range(5)] == [True] * 2 + [False] * 3
    assert fallbacks("local") == before + 5


async def test_redis_down_open_mode_lets_everything_through(own_redis: devservices.LocalRedis,
                                                            make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(own_redis.url, 0.05), failure_mode="open", clock=fixed_clock())
    own_redis.stop()
    before = fallbacks("open")

    results = [await timed(limiter.check(uuid.uuid4(), uuid.uuid4(), 5, 60)) for _ in range(3)]
    route, space = uuid.uuid4(), uuid.uuid4()
    results += [await timed(limiter.check(route, space, 5, 60)) for _ in range(17)]

    assert all(d.allowed for d, _ in results)
    assert results[0][0].headers()["RateLimit-Remaining"] == "4"
    assert fallbacks("open") == before + 20
    assert max(elapsed for _, elapsed in results) < 0.05 + 0.15


async def test_redis_down_closed_mode_refuses(own_redis: devservices.LocalRedis,
                                              make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(own_redis.url, 0.05), failure_mode="closed", clock=fixed_clock())
    own_redis.stop()
    before = fallbacks("closed")

    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(RateLimitUnavailable) as raised:
            await limiter.check(uuid.uuid4(), uuid.uuid4(), 5, 60)
        assert time.perf_counter() - started < 0.05 + 0.15
        assert raised.value.retry_after >= 1

    assert fallbacks("closed") == before + 3


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A server that accepts connections and reads, but never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_costs_at_most_the_timeout(silent_redis: str,
                                                                    make_link: LinkFactory) -> None:
    limiter = RateLimiter(make_link(silent_redis, 0.05), failure_mode="local", clock=fixed_clock())
    route, space = uuid.uuid4(), uuid.uuid4()
    before = fallbacks("local")

    results = [await timed(limiter.check(route, space, 3, 60)) for _ in range(5)]
    await asyncio.sleep(PAUSE_AFTER_FAILURE + 0.1)  # the next call tries Redis (and waits) again
    results.append(await timed(limiter.check(route, space, 3, 60)))

    assert max(elapsed for _, elapsed in results) < 0.2
    assert [d.allowed for d, _ in results] == [True] * 3 + [False] * 3
    assert fallbacks("local") == before + 6


async def test_redis_counts_again_after_it_returns(make_link: LinkFactory) -> None:
    server = devservices.start_redis()
    try:
        limiter = RateLimiter(make_link(server.url, 0.05), failure_mode="local", clock=fixed_clock())
        route, space = uuid.uuid4(), uuid.uuid4()
        assert (await limiter.check(route, space, 10, 60)).remaining == 9

        server.stop()
        before = fallbacks("local")
        assert (await limiter.check(route, space, 10, 60)).allowed
        assert fallbacks("local") == before + 1

        server = devservices.start_redis(server.port)  # empty again: no persistence
        await asyncio.sleep(PAUSE_AFTER_FAILURE + 0.1)
        decision = await limiter.check(route, space, 10, 60)
        assert decision.remaining == 9  # counted by the new Redis (its first request)
        assert fallbacks("local") == before + 1
        assert (await limiter.check(route, space, 10, 60)).remaining == 8
    finally:
        server.stop()


async def test_heartbeat_counts_live_nodes_and_leave_removes_one(own_redis: devservices.LocalRedis,
                                                                 make_link: LinkFactory) -> None:
    a, b = (RateLimiter(make_link(own_redis.url)) for _ in range(2))
    tasks = [asyncio.create_task(node.run_heartbeat(interval=0.05)) for node in (a, b)]
    try:
        await asyncio.sleep(0.3)
        assert (a.live_nodes, b.live_nodes) == (2, 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    await a.leave()
    assert await b.beat(interval=0.05) == 1
    # A node that stops beating without leaving ages out after three intervals.
    stale = RateLimiter(make_link(own_redis.url))
    assert await stale.beat(interval=0.05) == 2
    await asyncio.sleep(0.2)
    assert await b.beat(interval=0.05) == 1
