"""Rate limits and the response cache, through the proxy, with and without Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, add_route, install_in, make_plugin, problem, until_status


class Counting:
    """An upstream that counts calls per path and answers what the query asks for."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls[request.path] = self.calls.get(request.path, 0) + 1
        await asyncio.sleep(float(request.query.get("delay", "0")))
        headers = {}
        if "cc" in request.query:
            headers["Cache-Control"] = request.query["cc"]
        if "cookie" in request.query:
            headers["Set-Cookie"] = "a=b"
        return web.json_response({"n": self.calls[request.path], "caller": request.headers.get("X-Gateway-User-Id")},
                                 status=int(request.query.get("status", "200")), headers=headers)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Counting, str]:
    up = Counting()
    server: TestServer = await aiohttp_server(up.app)
    return up, str(server.make_url("")).rstrip("/")


@pytest.fixture(params=["memory", "redis"])
async def gateway(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[TestClient]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    async with gateway_client(make_settings(database_url, redis_url=redis_url)) as client:
        yield client


async def limited_plugin(db: asyncpg.Pool, make: Factory, url: str, **route: Any) -> Plugin:
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", **route)
    return plugin


async def test_limit_headers_and_429(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                     upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, rate_limit=3, rate_limit_window=3600)
    first = await until_status(gateway, plugin.path("/a"), plugin.member, 200)
    assert first.headers["RateLimit-Limit"] == "3" and first.headers["RateLimit-Remaining"] == "2"
    assert first.headers["RateLimit-Policy"] == '"route";q=3;w=3600'
    reset = int(first.headers["RateLimit-Reset"])
    assert 0 < reset <= 3600 and first.headers["RateLimit"] == f'"route";r=2;t={reset}'
    for remaining in (1, 0):
        response = await gateway.get(plugin.path("/a"), headers=plugin.member)
        assert response.status == 200 and response.headers["RateLimit-Remaining"] == str(remaining)
    refused = await gateway.get(plugin.path("/a"), headers=plugin.member)
    assert refused.status == 429 and refused.headers["Content-Type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) > 0 and refused.headers["RateLimit-Remaining"] == "0"
    assert problem(await refused.read())["status"] == 429
    assert up.calls["/a"] == 3  # the refused request never reached the upstream

    # Counted per space: another space installing the same service has its own window.
    other_space = await make.space()
    member = await make.member(other_space, "member")
    await install_in(db, plugin, other_space)
    path = f"/spaces/{other_space}/plugins/{plugin.slug}/a"
    await until_status(gateway, path, make.auth(member), 200)


async def test_cache_hit_makes_no_upstream_call(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60)
    miss = await until_status(gateway, plugin.path("/c"), plugin.member, 200)
    assert miss.headers["X-Cache-Status"] == "MISS"
    hit = await gateway.get(plugin.path("/c"), headers=plugin.member)
    assert hit.status == 200 and hit.headers["X-Cache-Status"] == "HIT" and "Age" in hit.headers
    assert (await hit.json())["n"] == 1 and up.calls["/c"] == 1
    head = await gateway.head(plugin.path("/c"), headers=plugin.member)
    assert head.status == 200
    posted = await gateway.post(plugin.path("/c"), headers=plugin.member)
    assert posted.headers["X-Cache-Status"] == "BYPASS"
    # A different query is a different answer.
    assert (await gateway.get(plugin.path("/c?x=1"), headers=plugin.member)).headers["X-Cache-Status"] == "MISS"


async def test_hundred_concurrent_misses_make_one_call(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                       upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60)
    await until_status(gateway, plugin.path("/warm"), plugin.member, 200)
    answers = await asyncio.gather(*(gateway.get(plugin.path("/burst?delay=0.2"), headers=plugin.member)
                                     for _ in range(100)))
    assert all(a.status == 200 for a in answers)
    assert up.calls["/burst"] == 1
    assert sorted(a.headers["X-Cache-Status"] for a in answers).count("MISS") == 1


async def test_never_shared_across_spaces_or_callers(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                     upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60)
    await until_status(gateway, plugin.path("/mine"), plugin.member, 200)
    colleague = make.auth(await make.member(plugin.space_id, "member"))
    again = await gateway.get(plugin.path("/mine"), headers=colleague)
    assert again.headers["X-Cache-Status"] == "MISS" and up.calls["/mine"] == 2

    other_space = await make.space()
    outsider = await make.member(other_space, "member")
    await install_in(db, plugin, other_space)
    path = f"/spaces/{other_space}/plugins/{plugin.slug}/mine"
    response = await until_status(gateway, path, make.auth(outsider), 200)
    assert response.headers["X-Cache-Status"] == "MISS" and up.calls["/mine"] == 3


async def test_space_scope_shares_within_the_space_only(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                        upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60, options={"cache_scope": "space"})
    await until_status(gateway, plugin.path("/shared"), plugin.member, 200)
    colleague = make.auth(await make.member(plugin.space_id, "viewer"))
    assert (await gateway.get(plugin.path("/shared"), headers=colleague)).headers["X-Cache-Status"] == "HIT"
    assert up.calls["/shared"] == 1


@pytest.mark.parametrize("query", ["cc=no-store", "cc=private", "cc=public,%20no-store", "cookie=1", "status=500",
                                   "status=302"])
async def test_uncacheable_answers_are_not_stored(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                  upstream: tuple[Counting, str], query: str) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60)
    await until_status(gateway, plugin.path("/warm"), plugin.member, 200)
    for _ in range(2):
        response = await gateway.get(plugin.path(f"/u?{query}"), headers=plugin.member, allow_redirects=False)
        assert response.headers["X-Cache-Status"] == "MISS"
        assert "Set-Cookie" not in response.headers
    assert up.calls["/u"] == 2


async def test_route_change_and_purge_drop_entries(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                   upstream: tuple[Counting, str]) -> None:
    up, url = upstream
    plugin = await limited_plugin(db, make, url, cache_enabled=True, cache_ttl=60)
    await until_status(gateway, plugin.path("/p"), plugin.member, 200)
    assert (await gateway.get(plugin.path("/p"), headers=plugin.member)).headers["X-Cache-Status"] == "HIT"

    await db.execute("UPDATE service_api_routes SET cache_ttl = 120 WHERE service_id = $1", plugin.service_id)
    await until_status(gateway, plugin.path("/p"), plugin.member, 200)  # reload settles
    deadline = asyncio.get_running_loop().time() + 2
    while (await gateway.get(plugin.path("/p"), headers=plugin.member)).headers["X-Cache-Status"] == "HIT":
        assert asyncio.get_running_loop().time() < deadline, "a changed route still served old entries"
        await asyncio.sleep(0.05)

    assert (await gateway.get(plugin.path("/p"), headers=plugin.member)).headers["X-Cache-Status"] == "HIT"
    admin = await make.admin()
    purged = await gateway.delete(f"/api/v1/services/{plugin.service_id}/cache", headers=admin)
    assert purged.status == 204
    assert (await gateway.get(plugin.path("/p"), headers=plugin.member)).headers["X-Cache-Status"] == "MISS"
    stranger = make.auth(await make.user())
    assert (await gateway.delete(f"/api/v1/services/{plugin.service_id}/cache", headers=stranger)).status == 403
