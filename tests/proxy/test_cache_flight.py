"""The response cache's single flight when the fetch fails or Redis misbehaves.

- Callers of a cached route waiting for a leader whose upstream call fails (504 slower than the
  timeout, 502 unreachable, 503 no pool slot) get the same problem at once, not after fetching in
  turn: nobody waits for two upstream timeouts (bench/RESULTS.md, "Faults under load", defect 1).
- A cross-node lock this node could not release (Redis paused after a failure) is never waited
  for by this node's next miss, and is released once Redis answers again (defect 2).
- After one broken connection RedisLink closes the other idle pooled connections, so stale
  connections to a restarted Redis do not fail one by one.

The races are driven with events and real servers (the gateway, an aiohttp upstream, a
redis-server of this module's own where connections are killed); time bounds are generous.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.dev import services as devservices
from gateway.errors import GatewayTimeout, ServiceUnavailable
from gateway.proxy.cache import LOCK_PREFIX, cache_key
from gateway.proxy.runtime import PROXY
from gateway.redis_link import RedisLink, RedisUnavailable
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, add_route, make_plugin, problem, until_status
from tests.proxy.test_cache import close, key_inputs, make_route, node

UPSTREAM_TIMEOUT = 2.0


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (polling, bounded) for a state the test has set in motion."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


def flight_users(client: TestClient) -> int:
    return sum(slot.users for slot in client.app[PROXY].cache._slots.values())


# -- through the gateway ------------------------------------------------------------------------

class Failing:
    """/ok answers; /hang never answers (until the test ends); /drop waits for `go`, then hangs
    up without answering; /busy holds its connection until `go`. Counts calls per path, and the
    gateway requests (X-Request-ID) they were made for: aiohttp's client retries an idempotent
    request once when a reused connection closes, which is one caller, not two."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.callers: dict[str, set[str]] = {}
        self.go = asyncio.Event()
        self.done = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/{name}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.calls[name] = self.calls.get(name, 0) + 1
        self.callers.setdefault(name, set()).add(request.headers["X-Request-ID"])
        if name == "hang":
            await self.done.wait()
        elif name == "drop":
            await self.go.wait()
            assert request.transport is not None
            request.transport.close()  # no answer: the gateway's read fails (502)
            await self.done.wait()
        elif name == "busy":
            await self.go.wait()
        return web.json_response({"n": self.calls[name]})


@pytest.fixture
async def failing(aiohttp_server: Any) -> AsyncIterator[tuple[Failing, str]]:
    up = Failing()
    server: TestServer = await aiohttp_server(up.app)
    yield up, str(server.make_url("")).rstrip("/")
    up.done.set()
    up.go.set()


@pytest.fixture(params=["memory", "redis"])
def redis_mode(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "memory" else request.getfixturevalue("redis_url")


async def cached_plugin(db: asyncpg.Pool, make: Factory, url: str) -> Plugin:
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", cache_enabled=True, cache_ttl=60)
    return plugin


async def test_followers_of_a_hanging_upstream_get_its_504_within_one_timeout(
        redis_mode: str, database_url: str, db: asyncpg.Pool, make: Factory,
        failing: tuple[Failing, str]) -> None:
    """The measured defect: 4 concurrent GETs of one key, upstream hanging, timeout 2 s answered
    after 2.01, 4.01, 4.01, 4.01 s. Sent at the same moment, so the followers' own waits would
    run out together with the leader's call unless they cover its whole attempt."""
    up, url = failing
    plugin = await cached_plugin(db, make, url)
    settings = make_settings(database_url, redis_url=redis_mode, upstream_timeout=UPSTREAM_TIMEOUT)
    async with gateway_client(settings) as client:
        await until_status(client, plugin.path("/ok"), plugin.member, 200)

        async def timed() -> tuple[int, dict[str, Any], float]:
            async with client.get(plugin.path("/hang"), headers=plugin.member) as answer:
                body = await answer.read()
                return answer.status, problem(body), time.monotonic() - started

        started = time.monotonic()
        answers = await asyncio.gather(*(timed() for _ in range(4)))
    assert [status for status, _, _ in answers] == [504] * 4
    assert up.calls["hang"] == 1 and len(up.callers["hang"]) == 1  # one upstream call for all four
    assert {body["detail"] for _, body, _ in answers} == {"The plugin did not answer in time"}
    assert len({body["request_id"] for _, body, _ in answers}) == 4  # each its own problem
    # One timeout and overhead, never two (4 s): the slowest answer comes with the leader's.
    assert max(elapsed for _, _, elapsed in answers) < UPSTREAM_TIMEOUT + 1.2, answers


async def test_followers_wait_for_the_leaders_whole_attempt(
        database_url: str, db: asyncpg.Pool, make: Factory, failing: tuple[Failing, str]) -> None:
    """The leader first waits for a pool slot, then for the hanging upstream: its attempt takes
    longer than the upstream timeout. Its followers wait for its 504 (its attempt is bounded by
    the pool, connect and read timeouts), instead of giving up after one upstream timeout and
    each calling the upstream in turn."""
    up, url = failing
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/cached/{rest:path}", "/{rest}", cache_enabled=True, cache_ttl=60)
    # The slot holder's own route waits longer than the cached one's timeout.
    await add_route(db, plugin.service_id, "/plain/{rest:path}", "/{rest}", options={"timeout": 30})
    timeout = 1.0
    settings = make_settings(database_url, upstream_pool_per_host=1, upstream_pool_timeout=10.0,
                             upstream_timeout=timeout)
    async with gateway_client(settings) as client:
        await until_status(client, plugin.path("/cached/ok"), plugin.member, 200)

        async def hold() -> int:
            async with client.get(plugin.path("/plain/busy"), headers=plugin.member) as held:
                await held.read()
                return held.status

        holder = asyncio.create_task(hold())
        await until(lambda: up.calls.get("busy") == 1)  # the only slot is taken

        async def fetch() -> int:
            async with client.get(plugin.path("/cached/hang"), headers=plugin.member) as answer:
                await answer.read()
                return answer.status

        requests = [asyncio.create_task(fetch()) for _ in range(4)]
        await until(lambda: flight_users(client) == 4)
        await asyncio.sleep(timeout + 0.5)  # longer than one upstream timeout, by construction
        up.go.set()  # the slot comes free: the leader's upstream call starts only now
        released = time.monotonic()
        assert await holder == 200
        statuses = await asyncio.gather(*requests)
        elapsed = time.monotonic() - released
    assert statuses == [504] * 4
    assert len(up.callers["hang"]) == 1  # the followers never called the upstream themselves
    assert elapsed < timeout + 1.2


async def test_followers_of_an_unreachable_upstream_get_its_502_at_once(
        redis_mode: str, database_url: str, db: asyncpg.Pool, make: Factory,
        failing: tuple[Failing, str]) -> None:
    up, url = failing
    plugin = await cached_plugin(db, make, url)
    settings = make_settings(database_url, redis_url=redis_mode, upstream_timeout=30.0)
    async with gateway_client(settings) as client:
        await until_status(client, plugin.path("/ok"), plugin.member, 200)

        async def fetch() -> tuple[int, dict[str, Any]]:
            async with client.get(plugin.path("/drop"), headers=plugin.member) as answer:
                return answer.status, problem(await answer.read())

        requests = [asyncio.create_task(fetch()) for _ in range(5)]
        # The leader is at the upstream, the four others wait in its flight: now it fails.
        await until(lambda: up.calls.get("drop") == 1 and flight_users(client) == 5)
        started = time.monotonic()
        up.go.set()
        answers = await asyncio.gather(*requests)
        assert time.monotonic() - started < 2.0
        assert [status for status, _ in answers] == [502] * 5
        assert len(up.callers["drop"]) == 1  # the waiting callers did not call the upstream in turn
        assert {body["detail"] for _, body in answers} == {"The plugin could not be reached"}
        assert len({body["request_id"] for _, body in answers}) == 5

        # A request after the failed flight has ended starts a new one: it calls the upstream.
        await until(lambda: flight_users(client) == 0)
        async with client.get(plugin.path("/drop"), headers=plugin.member) as again:
            assert again.status == 502
        assert len(up.callers["drop"]) == 2


async def test_followers_of_a_leader_without_a_pool_slot_get_its_503(
        database_url: str, db: asyncpg.Pool, make: Factory, failing: tuple[Failing, str]) -> None:
    """The upstream's pool is full: the leader's 503 (with its Retry-After) is every waiter's."""
    up, url = failing
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/cached/{rest:path}", "/{rest}", cache_enabled=True, cache_ttl=60)
    await add_route(db, plugin.service_id, "/plain/{rest:path}", "/{rest}")
    settings = make_settings(database_url, upstream_pool_per_host=1, upstream_pool_timeout=1.0)
    async with gateway_client(settings) as client:
        await until_status(client, plugin.path("/cached/ok"), plugin.member, 200)

        async def hold() -> int:
            async with client.get(plugin.path("/plain/busy"), headers=plugin.member) as held:
                await held.read()
                return held.status

        holder = asyncio.create_task(hold())
        await until(lambda: up.calls.get("busy") == 1)  # the only slot is taken

        async def fetch() -> tuple[int, str, dict[str, Any]]:
            async with client.get(plugin.path("/cached/ok?x=1"), headers=plugin.member) as answer:
                return answer.status, answer.headers.get("Retry-After", ""), problem(await answer.read())

        started = time.monotonic()
        answers = await asyncio.gather(*(fetch() for _ in range(4)))
        elapsed = time.monotonic() - started
        up.go.set()
        assert await holder == 200
    assert [status for status, _, _ in answers] == [503] * 4
    assert {retry for _, retry, _ in answers} == {"1"}
    assert len({body["detail"] for _, _, body in answers}) == 1
    assert elapsed < 1.0 + 1.2  # one pool wait, not four in turn
    assert up.calls["ok"] == 1  # the warm-up only


# -- ResponseCache.flight -----------------------------------------------------------------------

async def test_a_shared_failure_reaches_exactly_the_waiting_callers(links: Callable[[], RedisLink]) -> None:
    cache = node(links())
    key = cache_key(**key_inputs(make_route()))
    inside, fail = asyncio.Event(), asyncio.Event()
    leaders_error = ServiceUnavailable("The plugin is busy", retry_after=3)
    late: list[asyncio.Task[bool]] = []

    async def entrant() -> bool:
        async with cache.flight(key, timeout=30) as flight:
            return flight.leader

    async def leader() -> None:
        try:
            async with cache.flight(key) as flight:
                assert flight.leader
                inside.set()
                await fail.wait()
                flight.share_failure(lambda: ServiceUnavailable(leaders_error.detail, retry_after=3))
                raise leaders_error
        except ServiceUnavailable:
            # The flight has ended (its waiters are woken, but have not run yet): a newcomer
            # queues behind them, yet it was not waiting for the failed fetch.
            late.append(asyncio.create_task(entrant()))
            raise

    async def follower() -> BaseException | None:
        try:
            async with cache.flight(key, timeout=30):
                return None  # it was let in to fetch: the failure did not reach it
        except ServiceUnavailable as exc:
            return exc

    first = asyncio.create_task(leader())
    await inside.wait()
    followers = [asyncio.create_task(follower()) for _ in range(3)]
    await until(lambda: cache._slots[key].users == 4)
    fail.set()
    with pytest.raises(ServiceUnavailable):
        await first
    errors = await asyncio.gather(*followers)
    assert all(isinstance(error, ServiceUnavailable) for error in errors)
    assert len({id(error) for error in errors} | {id(leaders_error)}) == 4  # never a shared instance
    assert {error.headers["Retry-After"] for error in errors if error is not None} == {"3"}
    assert all(error is not None and error.__traceback__ is not leaders_error.__traceback__ for error in errors)
    # The newcomer was let in to fetch (leader=False: it queued behind others), not failed.
    assert await late[0] is False
    assert cache._slots == {}
    # Nobody left: the next entrant leads a new flight.
    async with cache.flight(key) as flight:
        assert flight.leader


async def test_an_unshared_failure_lets_the_waiters_fetch_in_turn(links: Callable[[], RedisLink]) -> None:
    """A failure the fetcher does not share (the pipeline shares only the upstream's 502, 503
    and 504) keeps the behaviour for uncacheable answers: the next waiter fetches."""
    cache = node(links())
    key = cache_key(**key_inputs(make_route()))
    inside, fail = asyncio.Event(), asyncio.Event()

    async def leader() -> None:
        async with cache.flight(key):
            inside.set()
            await fail.wait()
            raise GatewayTimeout("slow")

    async def follower() -> bool:
        async with cache.flight(key) as flight:
            return flight.leader

    first = asyncio.create_task(leader())
    await inside.wait()
    second = asyncio.create_task(follower())
    await until(lambda: cache._slots[key].users == 2)
    fail.set()
    with pytest.raises(GatewayTimeout):
        await first
    assert await second is False  # let in to fetch in turn (someone fetched before it)


# -- Redis: locks this node could not release ---------------------------------------------------

@pytest.fixture
async def own_redis() -> AsyncIterator[devservices.LocalRedis]:
    server = devservices.start_redis()
    try:
        yield server
    finally:
        server.stop()


async def kill_clients(url: str) -> int:
    """Close every other client's connection on the server: what a restart leaves the pooled
    connections with (each fails on its next use)."""
    admin = redis.Redis.from_url(url)
    try:
        return int(await admin.client_kill_filter(_type="normal", skipme=True))
    finally:
        await admin.aclose()


async def lock_ttl(url: str, key: str) -> int:
    admin = redis.Redis.from_url(url)
    try:
        return int(await admin.pttl(LOCK_PREFIX + key))
    finally:
        await admin.aclose()


async def test_a_lock_whose_release_failed_is_not_waited_for(own_redis: devservices.LocalRedis) -> None:
    link = RedisLink(own_redis.url, timeout=1.0)
    try:
        cache = node(link)
        key = cache_key(**key_inputs(make_route()))
        other = cache_key(**key_inputs(make_route()))
        async with cache.flight(other) as first, cache.flight(key) as second:  # two leaders
            assert first.leader and second.leader
            assert await lock_ttl(own_redis.url, other) > 0 and await lock_ttl(own_redis.url, key) > 0
            assert await kill_clients(own_redis.url) >= 1
            with pytest.raises(RedisUnavailable):  # a stale connection: the link pauses
                await link.call(lambda r: r.get("anything"))
        # Both releases fell into the pause: the locks still live in Redis.
        assert not link.usable()
        assert await lock_ttl(own_redis.url, key) > 1000 and await lock_ttl(own_redis.url, other) > 1000
        await until(link.usable, within=3.0)  # Redis answers again

        # The next miss of `key` on this node leads at once instead of polling for "another
        # node" (itself) until its deadline, and takes the lock afresh; `other` is released too.
        started = time.monotonic()
        async with cache.flight(key, timeout=10.0) as flight:
            assert flight.leader
            assert time.monotonic() - started < 0.5
            assert await lock_ttl(own_redis.url, other) == -2  # gone
            assert await lock_ttl(own_redis.url, key) > 4000  # ours, new
        assert await lock_ttl(own_redis.url, key) == -2
        assert cache._unreleased == {}
    finally:
        await close(link)


async def test_a_lock_whose_release_keeps_failing_is_still_not_waited_for(
        own_redis: devservices.LocalRedis) -> None:
    """Redis answers the lock's SET NX but the release fails again: this node goes ahead."""
    link = RedisLink(own_redis.url, timeout=1.0)
    try:
        cache = node(link)
        key = cache_key(**key_inputs(make_route()))
        async with cache.flight(key):
            await kill_clients(own_redis.url)
            with pytest.raises(RedisUnavailable):
                await link.call(lambda r: r.get("anything"))
        assert key in cache._unreleased
        await until(link.usable, within=3.0)

        async def failing_release() -> None:
            return None  # what it does when Redis fails again: nothing released, nothing raised

        cache._release_unreleased = failing_release  # type: ignore[method-assign]
        started = time.monotonic()
        async with cache.flight(key, timeout=10.0) as flight:
            assert flight.leader
        assert time.monotonic() - started < 0.5
    finally:
        await close(link)


# -- RedisLink: stale pooled connections --------------------------------------------------------

async def test_one_broken_connection_closes_the_other_idle_ones(own_redis: devservices.LocalRedis) -> None:
    link = RedisLink(own_redis.url, timeout=1.0)
    try:
        # Eight pooled connections, all idle afterwards.
        await asyncio.gather(*(link.call(lambda r: r.blpop(["nothing"], timeout=0.05)) for _ in range(8)))
        assert link.client is not None
        pool = link.client.connection_pool
        assert len(pool._available_connections) == 8  # type: ignore[attr-defined]
        assert await kill_clients(own_redis.url) == 8  # as after a restart: all of them stale
        with pytest.raises(RedisUnavailable):
            await link.call(lambda r: r.get("x"))  # the first one fails (and the link pauses)
        await until(link.usable, within=3.0)
        # The seven others were closed with it: eight calls at once all reconnect and succeed,
        # instead of seven more failures (and pauses) as each stale connection is used.
        results = await asyncio.gather(*(link.call(lambda r: r.blpop(["nothing"], timeout=0.05))
                                         for _ in range(8)), return_exceptions=True)
        assert results == [None] * 8
        assert link.healthy
    finally:
        await close(link)


async def test_a_timeout_keeps_the_idle_connections(own_redis: devservices.LocalRedis) -> None:
    """A slow answer says nothing about the other connections: they stay open."""
    link = RedisLink(own_redis.url, timeout=0.2)
    try:
        await asyncio.gather(*(link.call(lambda r: r.blpop(["nothing"], timeout=0.05)) for _ in range(4)))
        assert link.client is not None
        idle = list(link.client.connection_pool._available_connections)  # type: ignore[attr-defined]
        with pytest.raises(RedisUnavailable):
            await link.call(lambda r: r.blpop(["nothing"], timeout=1))  # longer than the timeout
        assert link.usable()  # one timeout: no pause
        assert sum(connection.is_connected for connection in idle) >= 3
    finally:
        await close(link)


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[Callable[[], RedisLink]]:
    made: list[RedisLink] = []

    def new() -> RedisLink:
        made.append(RedisLink(redis_url, timeout=1.0))
        return made[-1]

    yield new
    for link in made:
        await close(link)

