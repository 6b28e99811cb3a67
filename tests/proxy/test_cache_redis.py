"""GATEWAY_CACHE_REDIS_URL: the response cache on a Redis of its own, rate-limit counters on
REDIS_URL. Rate-limit counters carry expiries, so no eviction policy of one shared Redis is safe
for both. This test starts a second redis-server of its own and stops only that one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.dev import services as devservices
from gateway.proxy.cache import ResponseCache
from gateway.settings import Settings
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import add_route, make_plugin, until_status


@pytest.fixture
async def cache_redis() -> AsyncIterator[devservices.LocalRedis]:
    server = devservices.start_redis()
    try:
        yield server
    finally:
        server.stop()


async def keys(url: str, pattern: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return [name async for name in client.scan_iter(match=pattern, count=1000)]
    finally:
        await client.aclose()


async def test_cache_entries_and_rate_limit_counters_land_in_their_own_redis(
        cache_redis: devservices.LocalRedis, redis_url: str, database_url: str, db: asyncpg.Pool,
        make: Factory, aiohttp_server: Any) -> None:
    calls = []

    async def hello(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"n": len(calls)})

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", hello)
    upstream: TestServer = await aiohttp_server(upstream_app)
    plugin = await make_plugin(db, make, str(upstream.make_url("")).rstrip("/"), routes={})
    route_id = await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", cache_enabled=True,
                               cache_ttl=60, rate_limit=100, rate_limit_window=3600)

    settings = make_settings(database_url, redis_url=redis_url, cache_redis_url=cache_redis.url)
    async with gateway_client(settings) as client:
        miss = await until_status(client, plugin.path("/c"), plugin.member, 200)
        assert miss.headers["X-Cache-Status"] == "MISS" and miss.headers["RateLimit-Remaining"] == "99"
    # Another node with an empty L1: its hit can only come from the cache's Redis.
    async with gateway_client(settings) as other:
        hit = await until_status(other, plugin.path("/c"), plugin.member, 200)
        assert hit.headers["X-Cache-Status"] == "HIT" and hit.headers["RateLimit-Remaining"] == "98"
    assert calls == ["/c"]

    entries, counters = f"pgw:c:{plugin.service_id}:*", f"pgw:rl:{route_id}:*"
    assert len(await keys(cache_redis.url, entries)) == 1
    assert await keys(redis_url, entries) == []
    assert len(await keys(redis_url, counters)) == 1
    assert await keys(cache_redis.url, counters) == []
    assert await keys(cache_redis.url, "pgw:nodes*") == []  # heartbeats stay on REDIS_URL too


async def test_the_cache_redis_defaults_to_redis_url(tmp_path: Path) -> None:
    env, no_dotenv = {"REDIS_URL": "redis://limits:6379/0"}, tmp_path / ".env"
    assert Settings.from_env(env, dotenv=no_dotenv).cache_redis_url == "redis://limits:6379/0"
    split = Settings.from_env({**env, "GATEWAY_CACHE_REDIS_URL": "redis://cache:6379/0"}, dotenv=no_dotenv)
    assert split.cache_redis_url == "redis://cache:6379/0" and split.redis_url == "redis://limits:6379/0"
    # A Settings built in code may leave cache_redis_url empty: the cache then uses redis_url.
    for settings, configured in ((Settings(redis_url="redis://limits:6379/0"), True), (Settings(), False)):
        cache = ResponseCache.from_settings(settings)
        assert cache.link.configured is configured
        await cache.close()


async def test_a_stored_ttl_above_the_bound_is_held_to_it(redis_url: str, database_url: str, db: asyncpg.Pool,
                                                          make: Factory, aiohttp_server: Any) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", hello)
    upstream: TestServer = await aiohttp_server(upstream_app)
    plugin = await make_plugin(db, make, str(upstream.make_url("")).rstrip("/"), routes={})
    # Written straight into the table, as a row from before the bound was enforced.
    await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", cache_enabled=True, cache_ttl=10**6)
    async with gateway_client(make_settings(database_url, redis_url=redis_url, cache_max_ttl=5)) as client:
        miss = await until_status(client, plugin.path("/c"), plugin.member, 200)
        assert miss.headers["X-Cache-Status"] == "MISS"
    [entry] = await keys(redis_url, f"pgw:c:{plugin.service_id}:*")
    client = redis.Redis.from_url(redis_url)
    try:
        assert 0 < await client.pttl(entry) <= 5000
    finally:
        await client.aclose()
