"""The gateway on a Redis Cluster (`redis+cluster://`, issue 14 item 1): three primaries on
loopback, started once for this module (tests/redis_topologies.py) and stopped by their PIDs.

Every scenario of tests/proxy/redis_scenarios.py, then what only a cluster has: one batch of
checks spanning every node, a node that lost the script (only its commands are sent again), and
a slot moved under the limiter and the cache (ASK while it migrates, MOVED once it has moved)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import pytest
from redis.crc import key_slot

from gateway.proxy.cache import ENTRY_PREFIX, cache_key
from gateway.proxy.ratelimit import KEY_PREFIX, RateLimiter, _window
from tests.proxy.redis_scenarios import (FIXED_NOW, SCENARIOS, WINDOW, LinkFactory, broken_connections_are_dropped,
                                         fallbacks, fixed_clock)
from tests.proxy.test_cache import key_inputs, make_route, node, response
from tests.redis_topologies import ClusterTopology, SlotMove, redirections


def limit_key(route: UUID, space: UUID) -> str:
    """The rate limiter's key for a check under fixed_clock()."""
    start, _ = _window(FIXED_NOW, WINDOW)
    return f"{KEY_PREFIX}{route}:{space}:{WINDOW}:{start}"


def slot_of(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
async def test_scenario(cluster: ClusterTopology, links: LinkFactory, scenario: Any) -> None:
    await scenario(links, cluster.url())


async def test_broken_connections_are_dropped_on_every_node(cluster: ClusterTopology, links: LinkFactory) -> None:
    def kill_clients() -> int:
        killed = 0
        for server in cluster.servers:
            with server.client() as client:
                killed += int(client.client_kill_filter(_type="normal", skipme=True))
        return killed

    await broken_connections_are_dropped(links, cluster.url(), kill_clients)


async def test_the_url_forms_reach_the_cluster(cluster: ClusterTopology, links: LinkFactory) -> None:
    one_node = links(f"redis+cluster://127.0.0.1:{cluster.servers[2].port}")  # the others are discovered
    assert await one_node.ping()
    assert len(one_node.client.get_primaries()) == 3


async def test_one_batch_across_every_node_counts_each_key_exactly(cluster: ClusterTopology,
                                                                   links: LinkFactory) -> None:
    limiter = RateLimiter(links(cluster.url()), clock=fixed_clock())
    route, spaces = uuid.uuid4(), [uuid.uuid4() for _ in range(30)]
    owners = {cluster.owner(slot_of(limit_key(route, space))).port for space in spaces}
    assert len(owners) == 3  # the batch spans the whole cluster
    before = fallbacks()

    # One event-loop turn: one pipeline, split by node.
    decisions = await asyncio.gather(*(limiter.check(route, space, 10, WINDOW) for space in spaces
                                       for _ in range(15)))

    for i in range(len(spaces)):
        mine = decisions[i * 15:(i + 1) * 15]
        assert sum(d.allowed for d in mine) == 10
        assert sorted(d.remaining for d in mine if d.allowed) == list(range(10))
    assert fallbacks() == before


async def test_a_node_that_lost_the_script_does_not_make_the_others_count_twice(
        cluster: ClusterTopology, links: LinkFactory) -> None:
    limiter = RateLimiter(links(cluster.url()), clock=fixed_clock())
    route, spaces = uuid.uuid4(), [uuid.uuid4() for _ in range(30)]
    assert all((await asyncio.gather(*(limiter.check(route, s, 10, WINDOW) for s in spaces))))
    flushed = cluster.owner(slot_of(limit_key(route, spaces[0])))
    with flushed.client() as client:
        client.script_flush()  # that node only: as after its restart
    before = fallbacks()

    decisions = await asyncio.gather(*(limiter.check(route, space, 10, WINDOW) for space in spaces))

    assert [d.remaining for d in decisions] == [8] * len(spaces)  # the second check of each, once
    assert fallbacks() == before
    with flushed.client() as client:
        assert client.script_exists(limiter._incr.sha) == [True]  # type: ignore[union-attr]


def a_key_of_slot(slot: int, make: Any) -> Any:
    """The first of make(0), make(1), ... whose key (make(i)[0]) is in `slot`."""
    for i in range(2_000_000):
        made = make(i)
        if slot_of(made[0]) == slot:
            return made
    raise AssertionError(f"no key found for slot {slot}")


async def test_a_slot_move_is_followed_by_the_limiter_and_the_cache(cluster: ClusterTopology,
                                                                    links: LinkFactory) -> None:
    url = cluster.url()
    limiter = RateLimiter(links(url), clock=fixed_clock())
    writer, reader = node(links(url)), node(links(url))  # two nodes; `reader` keeps no L1 copy below
    route, space = uuid.uuid4(), uuid.uuid4()
    slot = slot_of(limit_key(route, space))
    # Another limit key and a cache entry in the same slot, neither in Redis yet.
    _, new_space = a_key_of_slot(slot, lambda i: (limit_key(route, UUID(int=i)), UUID(int=i)))
    service = make_route()
    entry_key = a_key_of_slot(
        slot, lambda i: (ENTRY_PREFIX + cache_key(**key_inputs(service, path=f"/{i}")),))[0][len(ENTRY_PREFIX):]
    source = cluster.owner(slot)
    target = next(server for server in cluster.servers if server is not source)
    before, redirected = fallbacks(), redirections(source)

    # Several idle connections to the target on each link, as under load: ASKING and the
    # command it announces must still go out on one (gateway/redis_link.py, _NewestFirst).
    on_target = [key for key in (f"warm:{i}" for i in range(400))
                 if cluster.owner(slot_of(key)) is target][:10]
    for link in (limiter.link, reader.link):
        await asyncio.gather(*(link.call(lambda r, k=key: r.get(k)) for key in on_target))
        assert len(link.client.get_node("127.0.0.1", target.port)._free) >= 2

    async def counts(of: UUID, n: int) -> list[int]:
        """n concurrent checks (one pipeline): the counts Redis gave, in order."""
        # A limit near enough that every check is counted in Redis, none from a reserved block.
        decisions = await asyncio.gather(*(limiter.check(route, of, 500, WINDOW) for _ in range(n)))
        return sorted(500 - d.remaining for d in decisions)

    def fresh_reader() -> Any:
        reader._l1 = type(reader._l1)(reader._l1.max_bytes, reader._l1.space_bytes)  # L1 forgotten: Redis only
        return reader

    assert await counts(space, 10) == list(range(1, 11))
    await writer.put(entry_key, response(b"moved along"))
    assert (await fresh_reader().get(entry_key)) is not None

    move = SlotMove(cluster, slot, target)
    move.begin()  # migrating: the source serves what it has, and answers ASK for the rest
    assert await counts(space, 5) == list(range(11, 16))
    assert await counts(new_space, 3) == [1, 2, 3]  # a new key: ASK, created on the target
    assert (await fresh_reader().get(entry_key)).body == b"moved along"  # type: ignore[union-attr]

    assert move.migrate_keys() == 2  # the counter and the entry (the new key is there already)
    assert await counts(space, 5) == list(range(16, 21))  # ASK
    assert (await fresh_reader().get(entry_key)).body == b"moved along"  # type: ignore[union-attr]
    assert redirections(source)["ASK"] > redirected["ASK"]

    move.finish()  # moved: the source answers MOVED, the clients learn the new owner
    assert await counts(space, 5) == list(range(21, 26))
    assert await counts(new_space, 2) == [4, 5]
    assert (await fresh_reader().get(entry_key)).body == b"moved along"  # type: ignore[union-attr]
    assert redirections(source)["MOVED"] > redirected["MOVED"]
    assert cluster.owner(slot) is target
    with target.client() as client:
        assert int(client.get(limit_key(route, space))) == 25
    assert await writer.purge_service(service.service_id) == 1
    assert await fresh_reader().get(entry_key) is None
    assert fallbacks() == before  # no call fell back at any step
