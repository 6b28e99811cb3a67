"""A space's quarter of the in-process cache (contract: "No space holds more than a quarter of
GATEWAY_CACHE_MEMORY_BYTES"): one space filling the cache evicts only its own entries."""

from __future__ import annotations

import time
import uuid
from uuid import UUID

from gateway.proxy.cache import (
    ENTRY_OVERHEAD, CachedResponse, MemoryCache, ResponseCache, cache_key, space_of,
)
from gateway.redis_link import RedisLink
from routing.table import Route

BODY = 1_000


def make_route() -> Route:
    return Route(id=uuid.uuid4(), service_id=uuid.uuid4(), service_slug="weather", route_path="/f",
                 method="GET", target_url="http://upstream/f", cache_enabled=True, cache_ttl=60,
                 version="v1")


def key(route: Route, space: UUID, path: str) -> str:
    return cache_key(space_id=space, caller="user:1", route=route, installation_id=UUID(int=2),
                     installation_version="v1", method="GET", path=path, raw_query="", accept="",
                     accept_encoding="")


def answer(size: int = BODY) -> CachedResponse:
    return CachedResponse(200, (("Content-Type", "text/plain"),), b"x" * size, time.time(), 60)


def entry_size(k: str, response: CachedResponse) -> int:
    return len(k) + len(response.body) + sum(len(n) + len(v) for n, v in response.headers) + ENTRY_OVERHEAD


def test_the_key_names_its_space_after_the_service() -> None:
    route, space = make_route(), uuid.uuid4()
    k = key(route, space, "/a")
    assert k.startswith(f"{route.service_id}:{space}:")
    assert space_of(k) == str(space)
    assert space_of("not-a-cache-key") == ""


def test_one_space_filling_the_cache_cannot_evict_another_space() -> None:
    one = answer()
    size = entry_size(key(make_route(), uuid.uuid4(), "/0"), one)
    memory = MemoryCache(max_bytes=40 * size, space_bytes=10 * size)
    route, victim, hog = make_route(), uuid.uuid4(), uuid.uuid4()
    kept = [key(route, victim, f"/v{i}") for i in range(8)]
    for k in kept:
        assert memory.put(k, answer())
    for i in range(1_000):  # 25 times the whole cache
        memory.put(key(route, hog, f"/h{i}"), answer())
        assert memory.space_size(str(hog)) <= memory.space_bytes
    assert all(memory.get(k) is not None for k in kept)
    assert memory.space_size(str(victim)) == 8 * size
    # The hog keeps its own most recent entries, as many as its quarter holds.
    hogs = [memory.get(key(route, hog, f"/h{i}")) is not None for i in range(1_000)]
    assert sum(hogs) == 10 and all(hogs[-10:])
    assert memory.size == 18 * size <= memory.max_bytes


def test_a_space_past_its_share_evicts_its_least_recently_used() -> None:
    route, space = make_route(), uuid.uuid4()
    size = entry_size(key(route, space, "/0"), answer())
    memory = MemoryCache(max_bytes=100 * size, space_bytes=3 * size)
    first, second, third, fourth = (key(route, space, f"/{i}") for i in range(4))
    for k in (first, second, third):
        memory.put(k, answer())
    assert memory.get(first) is not None  # now the most recently used of the space
    memory.put(fourth, answer())
    assert memory.get(second) is None
    assert all(memory.get(k) is not None for k in (first, third, fourth))


def test_many_spaces_still_share_the_whole_bound() -> None:
    route = make_route()
    size = entry_size(key(route, uuid.uuid4(), "/0"), answer())
    memory = MemoryCache(max_bytes=8 * size, space_bytes=2 * size)
    spaces = [uuid.uuid4() for _ in range(6)]
    for space in spaces:  # 6 spaces of 2 entries: 12 entries in a cache of 8
        for i in range(2):
            memory.put(key(route, space, f"/{i}"), answer())
    assert len(memory) == 8 and memory.size == 8 * size
    assert all(memory.get(key(route, spaces[0], f"/{i}")) is None for i in range(2))  # the oldest went
    assert all(memory.get(key(route, spaces[-1], f"/{i}")) is not None for i in range(2))


def test_replacing_or_dropping_an_entry_keeps_the_accounting() -> None:
    route, space = make_route(), uuid.uuid4()
    memory = MemoryCache(max_bytes=1_000_000, space_bytes=250_000)
    k = key(route, space, "/a")
    memory.put(k, answer(100))
    memory.put(k, answer(5_000))
    assert memory.space_size(str(space)) == memory.size == entry_size(k, answer(5_000))
    assert memory.pop(k) is not None and memory.pop(k) is None
    assert memory.size == 0 and memory.space_size(str(space)) == 0 and len(memory) == 0


def test_an_answer_larger_than_a_quarter_stays_out_of_memory() -> None:
    route, space = make_route(), uuid.uuid4()
    memory = MemoryCache(max_bytes=40_000, space_bytes=10_000)
    assert not memory.put(key(route, space, "/big"), answer(10_001))
    assert memory.put(key(route, space, "/small"), answer(5_000))
    assert len(memory) == 1


async def test_the_response_cache_holds_each_space_to_a_quarter() -> None:
    link = RedisLink("", timeout=0.05)  # L1 only, as in single-node mode
    cache = ResponseCache(link, memory_bytes=200_000, max_body_bytes=100_000)
    route, victim, hog = make_route(), uuid.uuid4(), uuid.uuid4()
    kept = [key(route, victim, f"/v{i}") for i in range(20)]
    for k in kept:
        await cache.put(k, answer(2_000))
    for i in range(500):  # 2.5 MB from one space into a cache of 200 kB
        await cache.put(key(route, hog, f"/h{i}"), answer(2_000))
    assert all([await cache.get(k) is not None for k in kept])
    assert cache._l1.space_size(str(hog)) <= 50_000
    # An answer over a quarter is not kept in memory (with Redis, it would be in Redis only).
    await cache.put(key(route, victim, "/huge"), answer(60_000))
    assert await cache.get(key(route, victim, "/huge")) is None
    await cache.close()
