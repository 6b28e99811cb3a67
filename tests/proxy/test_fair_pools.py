"""Fair upstream pools through a real gateway: one space cannot hold a plugin's whole pool, a
full pool serves waiting spaces in turn, and a wait has a deadline (503 with Retry-After).

Time bounds are generous (a slow, shared 2-core machine); bench/hostile.py has the figures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway import metrics
from gateway.proxy.pools import host_key
from gateway.proxy.runtime import PROXY
from gateway.settings import Settings
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, install_in, make_plugin, problem, until_status


def pool_settings(database_url: str, per_host: int, timeout: float) -> Settings:
    # The calls here overlap by design (slow ones, several per space): the breaker's bound on
    # calls in flight before the upstream answered (gateway/proxy/breaker.py) is lifted so that
    # it is the pool that queues them.
    return make_settings(database_url, upstream_pool_per_host=per_host, upstream_pool_timeout=timeout,
                         breaker_failures=1000)


class Upstream:
    """Answers /fast at once, /slow after ?s= seconds, /hold once `opened` is set; records the
    space of every call in the order the calls arrived."""

    def __init__(self) -> None:
        self.arrivals: list[str] = []
        self.opened = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/fast", self.fast)
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/hold", self.hold)

    async def fast(self, request: web.Request) -> web.Response:
        self.arrivals.append(request.headers["X-Gateway-Space-Id"])
        return web.json_response({})

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.json_response({})

    async def hold(self, request: web.Request) -> web.Response:
        await self.opened.wait()
        return web.json_response({})


@dataclass
class Spaces:
    """One plugin installed in three spaces, each with a member's headers."""

    plugin: Plugin
    headers: dict[str, dict[str, str]]  # "A", "B", "C" → a member's headers
    ids: dict[str, UUID]

    def path(self, space: str, rest: str) -> URL:
        return URL(f"/spaces/{self.ids[space]}/plugins/{self.plugin.slug}{rest}", encoded=True)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    return up, str(server.make_url("")).rstrip("/")


async def three_spaces(client: TestClient, db: asyncpg.Pool, make: Factory, url: str) -> Spaces:
    plugin = await make_plugin(db, make, url, auth_type="none")
    spaces = Spaces(plugin, {"A": plugin.member}, {"A": plugin.space_id})
    for name in ("B", "C"):
        space = await make.space(name)
        await install_in(db, plugin, space)
        spaces.ids[name], spaces.headers[name] = space, make.auth(await make.member(space))
    for name in spaces.ids:
        await until_status(client, spaces.path(name, "/fast"), spaces.headers[name], 200)
    return spaces


def pools_of(client: TestClient) -> Any:
    return client.app[PROXY].pools  # type: ignore[index]


def waiting(client: TestClient, key: Any, count: int) -> Any:
    return lambda: pools_of(client).waiting(key) == count


async def until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def timed_get(client: TestClient, path: URL, headers: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    async with client.get(path, headers=headers) as response:
        await response.read()
        return response.status, time.monotonic() - started


async def test_a_space_holding_its_share_leaves_the_rest_of_the_pool_to_others(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """A opens 6 slow calls against a pool of 4 (share 0.5: 2 at once); B's calls are not queued
    behind them (today's FIFO connector made such a call wait 5.25 s)."""
    _, url = upstream
    settings = pool_settings(database_url, 4, 30)
    async with gateway_client(settings) as client:
        spaces = await three_spaces(client, db, make, url)
        key = host_key(URL(url))
        hogs = [asyncio.create_task(timed_get(client, spaces.path("A", "/slow?s=2"), spaces.headers["A"]))
                for _ in range(6)]
        await until(lambda: pools_of(client).waiting(key) == 4)
        assert pools_of(client).holding(key, spaces.ids["A"]) == 2
        for _ in range(5):
            status, seconds = await timed_get(client, spaces.path("B", "/fast"), spaces.headers["B"])
            assert status == 200 and seconds < 1.0  # no wait for a slot at all (a turnover is 2 s)
        results = await asyncio.gather(*hogs)
        assert all(status == 200 for status, _ in results)


async def test_a_full_pool_gives_a_newcomer_the_next_free_slot(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """A and C each hold their share of a full pool and have queues of their own; B's call gets
    the first slot that frees: it waits at most one connection's turnover (2 s here). First come,
    first served would put it behind six waiters: about two turnovers more."""
    _, url = upstream
    settings = pool_settings(database_url, 4, 30)
    async with gateway_client(settings) as client:
        spaces = await three_spaces(client, db, make, url)
        key = host_key(URL(url))
        hogs = [asyncio.create_task(timed_get(client, spaces.path(space, "/slow?s=2"), spaces.headers[space]))
                for space in ("A", "C") for _ in range(5)]
        await until(lambda: pools_of(client).waiting(key) == 6)
        status, seconds = await timed_get(client, spaces.path("B", "/fast"), spaces.headers["B"])
        assert status == 200 and seconds < 2.0 + 0.8
        await asyncio.gather(*hogs)


async def test_waiting_spaces_alternate_when_the_pool_is_full(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """Pool of one: C holds it; A queues three calls, then B three. They reach the plugin
    A B A B A B (first come, first served: A A A B B B)."""
    up, url = upstream
    settings = pool_settings(database_url, 1, 30)
    async with gateway_client(settings) as client:
        spaces = await three_spaces(client, db, make, url)
        key = host_key(URL(url))
        holder = asyncio.create_task(timed_get(client, spaces.path("C", "/hold"), spaces.headers["C"]))
        await until(lambda: pools_of(client).holding(key) == 1)
        calls = []
        for space in ("A", "B"):
            for _ in range(3):
                calls.append(asyncio.create_task(
                    timed_get(client, spaces.path(space, "/fast"), spaces.headers[space])))
                await until(waiting(client, key, len(calls)))  # queued in this order
        up.arrivals.clear()
        up.opened.set()
        assert all(status == 200 for status, _ in await asyncio.gather(holder, *calls))
        names = {str(space_id): name for name, space_id in spaces.ids.items()}
        assert [names[space] for space in up.arrivals] == ["A", "B", "A", "B", "A", "B"]
        await until(lambda: pools_of(client).hosts == 0)  # no state left once nobody holds or waits


async def test_a_wait_past_the_pool_timeout_is_503_with_retry_after(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    settings = pool_settings(database_url, 4, 0.5)
    async with gateway_client(settings) as client:
        spaces = await three_spaces(client, db, make, url)
        slug = spaces.plugin.slug
        counted = {"service": slug, "kind": "pool_timeout"}
        before = metrics.REGISTRY.get_sample_value("gateway_upstream_errors_total", counted) or 0
        started = time.monotonic()

        async def call() -> tuple[int, float, dict[str, str], bytes]:
            async with client.get(spaces.path("A", "/slow?s=3"), headers=spaces.headers["A"]) as response:
                return response.status, time.monotonic() - started, dict(response.headers), await response.read()

        answers = await asyncio.gather(*(call() for _ in range(4)))
        refused = [a for a in answers if a[0] == 503]
        assert sorted(a[0] for a in answers) == [200, 200, 503, 503]
        for _, seconds, headers, body in refused:
            assert 0.4 < seconds < 2.5  # after the pool timeout, long before the slow calls end
            assert headers["Content-Type"] == "application/problem+json"
            assert int(headers["Retry-After"]) >= 1
            assert problem(body)["status"] == 503 and problem(body)["request_id"]
        after = metrics.REGISTRY.get_sample_value("gateway_upstream_errors_total", counted)
        assert after == before + 2


async def test_a_caller_who_hangs_up_while_waiting_leaves_no_trace(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    settings = pool_settings(database_url, 1, 30)
    async with gateway_client(settings) as client:
        spaces = await three_spaces(client, db, make, url)
        key = host_key(URL(url))
        holder = asyncio.create_task(timed_get(client, spaces.path("A", "/hold"), spaces.headers["A"]))
        await until(lambda: pools_of(client).holding(key) == 1)
        impatient = [asyncio.create_task(timed_get(client, spaces.path("B", "/fast"), spaces.headers["B"]))
                     for _ in range(3)]
        await until(lambda: pools_of(client).waiting(key) == 3)
        for task in impatient:
            task.cancel()  # the client closes its connections: the gateway's handlers are cancelled
        await asyncio.gather(*impatient, return_exceptions=True)
        await until(lambda: pools_of(client).waiting(key) == 0)
        patient = asyncio.create_task(timed_get(client, spaces.path("C", "/fast"), spaces.headers["C"]))
        await until(lambda: pools_of(client).waiting(key) == 1)
        up.opened.set()
        assert (await holder)[0] == 200 and (await patient)[0] == 200
        await until(lambda: pools_of(client).hosts == 0)
