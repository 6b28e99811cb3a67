"""Route option `stale_if_error` (contract revision 3, "Plugin health"): a cached answer up to that
many seconds past its TTL stands in when the upstream fails or its breaker is open, with
`X-Cache-Status: STALE` and `Age`; never outside the window; across nodes through Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, add_route, make_plugin, until_status

TTL, STALE = 1, 3


class Upstream:
    def __init__(self) -> None:
        self.mode = "ok"
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            return web.json_response({"down": True}, status=503)
        return web.json_response({"fresh": self.mode, "n": uuid.uuid4().hex})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    yield up, str(server.make_url("")).rstrip("/")


async def cached_plugin(db: asyncpg.Pool, make: Factory, url: str, **options: Any) -> Plugin:
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", method="GET", cache_enabled=True,
                    cache_ttl=TTL, options={"timeout": 0.3, **options})
    return plugin


async def get(client: TestClient, plugin: Plugin) -> tuple[int, str | None, str | None, bytes]:
    response = await client.get(plugin.path("/r"), headers=plugin.member)
    body = await response.read()
    return response.status, response.headers.get("X-Cache-Status"), response.headers.get("Age"), body


@pytest.mark.parametrize("failure", ["fail", "hang"])
async def test_a_failing_upstream_gets_the_stale_answer_inside_the_window_only(
        client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool, failure: str) -> None:
    up, url = upstream
    plugin = await cached_plugin(db, make, url, stale_if_error=STALE)
    first = await until_status(client, plugin.path("/r"), plugin.member, 200)
    assert first.headers["X-Cache-Status"] == "MISS"
    stored = await first.read()
    await asyncio.sleep(TTL + 0.2)
    up.mode = failure
    status, cache, age, body = await get(client, plugin)
    assert (status, cache, body) == (200, "STALE", stored)
    assert age is not None and int(age) >= TTL
    await asyncio.sleep(STALE)  # past TTL + stale_if_error: the upstream's failure is the answer
    status, cache, _, _ = await get(client, plugin)
    assert status == (503 if failure == "fail" else 504) and cache in (None, "MISS")


async def test_a_healthy_upstream_refreshes_instead(client: TestClient, upstream: tuple[Upstream, str],
                                                   make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await cached_plugin(db, make, url, stale_if_error=STALE)
    stored = await (await until_status(client, plugin.path("/r"), plugin.member, 200)).read()
    await asyncio.sleep(TTL + 0.2)
    status, cache, _, body = await get(client, plugin)
    assert (status, cache) == (200, "MISS") and body != stored


async def test_without_the_option_an_expired_answer_is_never_served(
        client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await cached_plugin(db, make, url)
    await until_status(client, plugin.path("/r"), plugin.member, 200)
    await asyncio.sleep(TTL + 0.2)
    up.mode = "fail"
    assert (await get(client, plugin))[0] == 503


async def test_an_open_breaker_serves_stale_and_so_does_another_node_through_redis(
        database_url: str, redis_url: str, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    settings = make_settings(database_url, redis_url=redis_url, cache_redis_url=redis_url,
                             breaker_failures=1, breaker_open_seconds=60)
    async with gateway_client(settings) as node_a, gateway_client(settings) as node_b:
        plugin = await cached_plugin(db, make, url, stale_if_error=STALE)
        stored = await (await until_status(node_a, plugin.path("/r"), plugin.member, 200)).read()
        await until_status(node_b, plugin.path("/other"), plugin.member, 200)  # B has loaded the route
        await asyncio.sleep(TTL + 0.2)
        up.mode = "fail"
        assert (await get(node_b, plugin))[1:2] == ("STALE",)  # B never saw the answer: Redis held it
        status, cache, _, body = await get(node_b, plugin)  # B's breaker is open now: stale at once
        assert (status, cache, body) == (200, "STALE", stored)
