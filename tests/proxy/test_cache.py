"""The response cache against a real Redis: keys, storage rules, L1/L2, single flight, purges,
and a Redis of our own that we stop to see the cache fall back to L1 without slowing down."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import pytest
from multidict import CIMultiDict

from gateway.dev import services as devservices
from gateway.proxy.cache import CachedResponse, ResponseCache, cache_key, cacheable
from gateway.redis_link import RedisLink, RedisUnavailable
from routing.table import Route

MiB = 1024 * 1024


def make_route(service_id: UUID | None = None, **changes: Any) -> Route:
    values: dict[str, Any] = dict(
        id=uuid.uuid4(), service_id=service_id or uuid.uuid4(), service_slug="weather",
        route_path="/forecast", method="GET", target_url="http://upstream/forecast",
        cache_enabled=True, cache_ttl=60, version="2025-01-01T00:00:00")
    values.update(changes)
    return Route(**values)


def response(body: bytes = b"hello", ttl: int = 60, stored_at: float | None = None) -> CachedResponse:
    return CachedResponse(200, (("Content-Type", "text/plain"), ("X-Two", "a"), ("X-Two", "b")), body,
                          time.time() if stored_at is None else stored_at, ttl)


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[Callable[[], RedisLink]]:
    """Each call is a separate connection pool: a separate gateway node, as far as Redis knows."""
    made: list[RedisLink] = []

    def new() -> RedisLink:
        made.append(RedisLink(redis_url, timeout=1.0))
        return made[-1]

    yield new
    for link in made:
        await close(link)


async def close(link: RedisLink) -> None:
    await link.close()
    if link.client is not None:
        # RedisLink builds its own pool, which Redis.aclose() leaves open; close it too, or its
        # sockets outlive the event loop (ResourceWarning, an error under filterwarnings).
        await link.client.connection_pool.aclose()


def node(link: RedisLink, **options: Any) -> ResponseCache:
    values: dict[str, Any] = dict(memory_bytes=MiB, max_body_bytes=MiB)
    values.update(options)
    return ResponseCache(link, **values)


# -- keys ---------------------------------------------------------------------------------------

def key_inputs(route: Route, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        space_id=UUID(int=1), caller="user:1", route=route, installation_id=UUID(int=2),
        installation_version="v1", method="GET", path="/forecast", raw_query="city=Oslo&days=3",
        accept="application/json", accept_encoding="gzip")
    values.update(changes)
    return values


def test_same_inputs_give_the_same_key() -> None:
    route = make_route()
    assert cache_key(**key_inputs(route)) == cache_key(**key_inputs(route))
    assert cache_key(**key_inputs(route)).startswith(f"{route.service_id}:")


@pytest.mark.parametrize("change", [
    dict(space_id=UUID(int=9)), dict(caller="user:2"), dict(caller="api_key:1"), dict(caller=None),
    dict(installation_id=UUID(int=3)), dict(installation_version="v2"), dict(method="HEAD"),
    dict(path="/forecast/"), dict(raw_query="city=Oslo&days=4"), dict(raw_query="days=3&city=Oslo"),
    dict(raw_query=""), dict(accept="text/html"), dict(accept_encoding="br"), dict(accept_encoding=""),
])
def test_key_differs_by_each_input(change: dict[str, Any]) -> None:
    route = make_route()
    assert cache_key(**key_inputs(route, **change)) != cache_key(**key_inputs(route))


def test_key_differs_by_route_and_its_version() -> None:
    route = make_route()
    newer = dataclasses.replace(route, version="2025-01-02T00:00:00")
    other = make_route(service_id=route.service_id)
    base = cache_key(**key_inputs(route))
    assert cache_key(**key_inputs(newer)) != base
    assert cache_key(**key_inputs(other)) != base


def test_fields_cannot_run_into_each_other() -> None:
    route = make_route()
    assert (cache_key(**key_inputs(route, path="/a", raw_query="b"))
            != cache_key(**key_inputs(route, path="/a|b", raw_query="")))


def test_space_scope_shares_across_callers_but_not_spaces() -> None:
    route = make_route(options={"cache_scope": "space"})
    assert cache_key(**key_inputs(route, caller="user:1")) == cache_key(**key_inputs(route, caller="user:2"))
    assert cache_key(**key_inputs(route, caller="user:1")) == cache_key(**key_inputs(route, caller=None))
    assert cache_key(**key_inputs(route)) != cache_key(**key_inputs(route, space_id=UUID(int=9)))


# -- what may be stored -------------------------------------------------------------------------

@pytest.mark.parametrize("status, expected", [(200, True), (301, True), (404, True), (500, False),
                                              (302, False), (204, False), (503, False)])
def test_cacheable_statuses(status: int, expected: bool) -> None:
    assert cacheable(status, {"Content-Type": "text/plain"}, 10, MiB) is expected


@pytest.mark.parametrize("value", ["no-store", "private", "PRIVATE", "public, max-age=0, no-store",
                                   "max-age=60,private", 'private="Set-Cookie"', " No-Store ",
                                   "public, s-maxage=10,  no-store=1"])
def test_not_cacheable_when_the_upstream_says_so(value: str) -> None:
    assert not cacheable(200, {"cache-control": value}, 10, MiB)
    repeated = CIMultiDict([("Cache-Control", "public"), ("cache-control", value)])
    assert not cacheable(200, repeated, 10, MiB)


def test_cacheable_rules() -> None:
    assert cacheable(200, {"Cache-Control": "public, max-age=0"}, 10, MiB)
    assert cacheable(200, CIMultiDict([("Cache-Control", "no-cache-please")]), None, MiB)
    assert not cacheable(200, {"Set-Cookie": "a=b"}, 10, MiB)
    assert not cacheable(200, {"set-cookie": "a=b"}, 10, MiB)
    assert not cacheable(200, CIMultiDict([("SET-COOKIE", "a=b")]), 10, MiB)
    assert cacheable(200, {}, MiB, MiB)
    assert not cacheable(200, {}, MiB + 1, MiB)
    assert cacheable(200, {}, None, MiB)  # unknown length: decided while reading


# -- storage ------------------------------------------------------------------------------------

def test_serialization_round_trip() -> None:
    original = CachedResponse(301, (("Location", "/é"), ("X", "")), bytes(range(256)) * 3, 1.5e9, 60)
    assert CachedResponse.from_bytes(original.to_bytes()) == original
    with pytest.raises(ValueError):
        CachedResponse.from_bytes(b"\x00\x00")
    with pytest.raises(ValueError):
        CachedResponse.from_bytes(b"\x00\x00\x00\x02{}body")


async def test_another_node_sees_the_entry_and_its_age_grows(links: Callable[[], RedisLink]) -> None:
    now = [time.time()]
    writer, reader = node(links()), node(links(), clock=lambda: now[0])
    key = cache_key(**key_inputs(make_route()))
    stored = response(b"x" * 10_000, stored_at=now[0])
    assert await reader.get(key) is None
    await writer.put(key, stored)
    seen = await reader.get(key)
    assert seen == stored
    assert seen.age(now[0]) == 0
    now[0] += 42.7
    again = await reader.get(key)
    assert again is not None and again.age(now[0]) == 42


async def test_ttl_expires_in_l1_and_redis(links: Callable[[], RedisLink]) -> None:
    link = links()
    writer = node(link)
    key = cache_key(**key_inputs(make_route()))
    await writer.put(key, response(ttl=1))
    assert await writer.get(key) is not None
    assert await link.call(lambda r: r.pttl("pgw:c:" + key)) > 0
    await asyncio.sleep(1.1)
    assert await writer.get(key) is None
    assert await node(links()).get(key) is None
    assert await link.call(lambda r: r.exists("pgw:c:" + key)) == 0


async def test_an_l1_copy_of_an_l2_entry_keeps_only_the_remaining_ttl(links: Callable[[], RedisLink]) -> None:
    now = [time.time()]
    link = links()
    writer, reader = node(link), node(links(), clock=lambda: now[0])
    key = cache_key(**key_inputs(make_route()))
    await writer.put(key, response(ttl=10, stored_at=now[0] - 5))
    assert await reader.get(key) is not None
    await link.call(lambda r: r.delete("pgw:c:" + key))
    assert await reader.get(key) is not None  # served from the copy in the reader's L1
    now[0] += 5.01
    assert await reader.get(key) is None


async def test_expired_or_oversized_puts_are_not_stored(links: Callable[[], RedisLink]) -> None:
    cache = node(links(), max_body_bytes=100)
    key = cache_key(**key_inputs(make_route()))
    await cache.put(key, response(ttl=10, stored_at=time.time() - 20))
    await cache.put(key, response(b"y" * 101))
    assert await cache.get(key) is None


async def test_l1_is_bounded_in_bytes() -> None:
    local = RedisLink("", timeout=0.05)  # no Redis: L1 only, as in single-node mode
    cache = node(local, memory_bytes=50_000)
    route = make_route()
    # One space each: the whole cache's bound, not a space's quarter (tests/proxy/test_cache_bounds.py).
    keys = [cache_key(**key_inputs(route, path=f"/{i}", space_id=UUID(int=100 + i))) for i in range(20)]
    for key in keys:
        await cache.put(key, response(b"z" * 5_000))  # 100 kB in total, twice the budget
    kept = [await cache.get(key) is not None for key in keys]
    assert kept[-1] and kept[-5]
    assert not any(kept[:8])  # the earliest went first
    assert 5 <= sum(kept) <= 9
    huge = cache_key(**key_inputs(route, path="/huge"))
    await cache.put(huge, response(b"h" * 60_000))  # larger than all of L1: not kept, no error
    assert await cache.get(huge) is None
    await close(local)


# -- single flight ------------------------------------------------------------------------------

class Upstream:
    def __init__(self) -> None:
        self.leaders = 0
        self.calls = 0

    async def request(self, cache: ResponseCache, key: str, *, fail: bool = False,
                      cacheable: bool = True) -> CachedResponse | None:
        """What the pipeline does: get → flight → (fetch, put) → answer."""
        found = await cache.get(key)
        if found is not None:
            return found
        async with cache.flight(key) as flight:
            if flight.leader:
                self.leaders += 1
            else:
                found = await cache.get(key)
                if found is not None:
                    return found
            self.calls += 1
            await asyncio.sleep(0.05)
            if fail:
                raise RuntimeError("upstream broke")
            answer = response()
            if cacheable:
                await cache.put(key, answer)
            return answer


@pytest.mark.parametrize("with_redis", [True, False])
async def test_concurrent_misses_make_one_upstream_call(links: Callable[[], RedisLink], with_redis: bool) -> None:
    link = links() if with_redis else RedisLink("", timeout=0.05)
    cache = node(link)
    key = cache_key(**key_inputs(make_route()))
    upstream = Upstream()
    answers = await asyncio.gather(*(upstream.request(cache, key) for _ in range(100)))
    assert all(answer is not None for answer in answers)
    assert upstream.leaders == 1 and upstream.calls == 1
    assert cache._slots == {}  # nothing left behind
    await close(link)


async def test_two_nodes_make_one_upstream_call(links: Callable[[], RedisLink]) -> None:
    first, second = node(links()), node(links())
    key = cache_key(**key_inputs(make_route()))
    upstream = Upstream()
    started = time.monotonic()
    requests = [upstream.request(cache, key) for _ in range(50) for cache in (first, second)]
    answers = await asyncio.gather(*requests)
    assert all(answer is not None for answer in answers)
    assert upstream.leaders == 1 and upstream.calls == 1
    assert time.monotonic() - started < 1.0
    assert await links().call(lambda r: r.exists("pgw:cl:" + key)) == 0  # lock released


async def test_a_failing_leader_releases_followers_one_at_a_time(links: Callable[[], RedisLink]) -> None:
    cache = node(links())
    key = cache_key(**key_inputs(make_route()))
    upstream = Upstream()
    leader = asyncio.create_task(upstream.request(cache, key, fail=True))
    await asyncio.sleep(0.01)
    followers = await asyncio.gather(*(upstream.request(cache, key) for _ in range(20)))
    with pytest.raises(RuntimeError):
        await leader
    # The first follower fetched again and stored; every other one read its answer.
    assert all(answer is not None for answer in followers)
    assert upstream.calls == 2 and upstream.leaders == 1


async def test_uncacheable_answers_are_fetched_one_at_a_time(links: Callable[[], RedisLink]) -> None:
    cache = node(links())
    key = cache_key(**key_inputs(make_route()))
    upstream = Upstream()
    started = time.monotonic()
    await asyncio.gather(*(upstream.request(cache, key, cacheable=False) for _ in range(4)))
    assert upstream.calls == 4 and upstream.leaders == 1
    assert time.monotonic() - started >= 0.2  # serial: never two upstream calls for one key at once


async def test_a_cancelled_leader_releases_followers(links: Callable[[], RedisLink]) -> None:
    link = links()
    cache = node(link)
    key = cache_key(**key_inputs(make_route()))
    inside = asyncio.Event()

    async def stuck_leader() -> None:
        async with cache.flight(key) as flight:
            assert flight.leader
            inside.set()
            await asyncio.sleep(3600)

    leader = asyncio.create_task(stuck_leader())
    await inside.wait()
    upstream = Upstream()
    followers = asyncio.gather(*(upstream.request(cache, key) for _ in range(10)))
    await asyncio.sleep(0.05)
    leader.cancel()
    async with asyncio.timeout(2):
        answers = await followers
    assert all(answer is not None for answer in answers)
    assert upstream.calls == 1 and upstream.leaders == 0
    assert await link.call(lambda r: r.exists("pgw:cl:" + key)) == 0


async def test_followers_do_not_wait_forever(links: Callable[[], RedisLink]) -> None:
    cache = node(links())
    key = cache_key(**key_inputs(make_route()))
    inside, done = asyncio.Event(), asyncio.Event()

    async def slow_leader() -> None:
        async with cache.flight(key):
            inside.set()
            await done.wait()

    leader = asyncio.create_task(slow_leader())
    await inside.wait()
    started = time.monotonic()
    async with cache.flight(key, timeout=0.2) as flight:
        assert not flight.leader
    assert 0.15 < time.monotonic() - started < 1.0
    # Another node waits for the Redis lock no longer than its own timeout either.
    other = node(links(), flight_timeout=0.2)
    started = time.monotonic()
    async with other.flight(key) as flight:
        assert flight.leader  # nobody stored anything: it goes ahead
    assert 0.15 < time.monotonic() - started < 1.0
    done.set()
    await leader


# -- purges -------------------------------------------------------------------------------------

async def test_purge_drops_one_service_everywhere(links: Callable[[], RedisLink]) -> None:
    link = links()
    here, there = node(link), node(links())
    purged, kept = make_route(), make_route()
    purged_keys = [cache_key(**key_inputs(purged, path=f"/{i}")) for i in range(30)]
    kept_key = cache_key(**key_inputs(kept))
    for key in [*purged_keys, kept_key]:
        await here.put(key, response())
        assert await there.get(key) is not None  # now in the other node's L1 too
    assert await here.purge_service(purged.service_id) == 30
    for key in purged_keys:
        assert await link.call(lambda r, k=key: r.exists("pgw:c:" + k)) == 0
        assert await here.get(key) is None
    assert await there.get(purged_keys[0]) is not None  # its L1 waits for the notification
    assert there.drop_local_service(purged.service_id) == 30
    assert all([await there.get(key) is None for key in purged_keys])
    assert await here.get(kept_key) is not None and await there.get(kept_key) is not None
    assert await here.purge_service(purged.service_id) == 0


# -- Redis down ---------------------------------------------------------------------------------

async def test_redis_down_is_a_fast_miss_and_writes_do_not_fail() -> None:
    server = devservices.start_redis()
    timeout = 0.05
    link, other = RedisLink(server.url, timeout), RedisLink(server.url, timeout)
    try:
        key = cache_key(**key_inputs(make_route()))
        await node(link).put(key, response())
        assert await node(other).get(key) is not None
        server.stop()
        for cache_link in (link, other):
            cache = node(cache_link)  # an empty L1: the read has to go to Redis
            started = time.monotonic()
            assert await cache.get(key) is None
            assert time.monotonic() - started < timeout + 0.25
            await cache.put(key, response(b"local"))  # kept in L1, no exception
            found = await cache.get(key)
            assert found is not None and found.body == b"local"
            async with cache.flight(key + "x") as flight:  # local single flight only
                assert flight.leader
            with pytest.raises(RedisUnavailable):  # a purge must not pretend it reached Redis
                await cache.purge_service(UUID(int=5))
    finally:
        server.stop()
        await close(link)
        await close(other)
