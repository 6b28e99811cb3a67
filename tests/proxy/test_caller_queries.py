"""What callers cost PostgreSQL, counted by PostgreSQL itself (pg_stat_statements), and what
still works with PostgreSQL stopped.

These tests start a PostgreSQL cluster of their own (with pg_stat_statements preloaded) and stop
only that one.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from auth.api_keys import hash_api_key
from db import callers as caller_rows
from db.migrate import migrate
from db.pool import create_pool
from gateway.dev import services as devservices
from gateway.proxy.key_hashes import Verdict
from gateway.proxy.runtime import PROXY
from tests.conftest import JWT_SECRET, gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status

TTL = 0.5


@pytest.fixture
async def own_postgres() -> AsyncIterator[devservices.LocalPostgres]:
    with tempfile.TemporaryDirectory(prefix="pgw-callers-") as tmp:
        Path(tmp).chmod(0o755)
        server = devservices.start_postgres(Path(tmp) / "data")
        try:
            admin = await asyncpg.connect(server.dsn)
            await admin.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            await admin.close()
            server.stop()
            server.start()
            admin = await asyncpg.connect(server.dsn)
            await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await admin.close()
            await migrate(server.dsn)
            yield server
        finally:
            server.stop()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def pool(own_postgres: devservices.LocalPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_postgres.dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def gateway(own_postgres: devservices.LocalPostgres) -> AsyncIterator[TestClient]:
    async with gateway_client(make_settings(own_postgres.dsn, caller_cache_ttl=TTL)) as client:
        yield client


async def calls(pool: asyncpg.Pool, sql: str) -> int:
    """How often PostgreSQL ran `sql` (as the gateway sends it) since the last reset."""
    normalized = " ".join(sql.split())
    return int(await pool.fetchval(
        "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements WHERE regexp_replace(query, '\\s+', ' ', 'g') = $1",
        normalized))


async def reset(pool: asyncpg.Pool) -> None:
    await pool.execute("SELECT pg_stat_statements_reset()")


def random_key() -> str:
    return f"pgw_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


async def known_key(client: TestClient, plugin: Plugin, role: str = "member") -> str:
    """A key made through the API and confirmed by its notification (no longer provisional)."""
    created = await client.post(f"/api/v1/spaces/{plugin.space_id}/api-keys", headers=plugin.owner,
                                json={"name": "k", "role": role})
    key: str = (await created.json())["key"]
    hashes = client.app[PROXY].callers.key_hashes
    deadline = time.monotonic() + 2
    while hashes.verdict(hash_api_key(key))[0] is not Verdict.KNOWN:
        assert time.monotonic() < deadline, "the key's notification never came back"
        await asyncio.sleep(0.01)
    return key


async def test_requests_make_no_membership_or_user_query_the_refresher_does(
        gateway: TestClient, pool: asyncpg.Pool, upstream: str) -> None:
    make = Factory(pool, JWT_SECRET)
    plugin = await make_plugin(pool, make, upstream)
    foreign = make.auth(await make.member(await make.space(), "owner"))
    await until_status(gateway, plugin.path("/hello"), plugin.member, 200)
    assert (await gateway.get(plugin.path("/hello"), headers=foreign)).status == 403
    await reset(pool)

    deadline = time.monotonic() + 6 * TTL
    while time.monotonic() < deadline:
        assert (await gateway.get(plugin.path("/hello"), headers=plugin.member)).status == 200
        assert (await gateway.get(plugin.path("/hello"), headers=foreign)).status == 403
        await asyncio.sleep(0.02)

    # The one-row lookups are the request path's; none ran while the entries were known.
    assert await calls(pool, caller_rows.SPACE_ROLE) == 0
    assert await calls(pool, caller_rows.USER_EXISTS) == 0
    # The batch reads are the refresher's: every ~0.8 TTL, so at least five in six TTLs.
    assert await calls(pool, caller_rows.SPACE_ROLES) >= 5
    assert await calls(pool, caller_rows.USERS_EXIST) >= 5


async def test_unknown_keys_cost_no_query(gateway: TestClient, pool: asyncpg.Pool, upstream: str) -> None:
    make = Factory(pool, JWT_SECRET)
    plugin = await make_plugin(pool, make, upstream)
    await until_status(gateway, plugin.path("/hello"), plugin.member, 200)
    key = await known_key(gateway, plugin)
    foreign_key = await known_key(gateway, await make_plugin(pool, make, upstream))
    await reset(pool)

    for _ in range(10):
        for headers in ({"X-API-Key": random_key()}, {"Authorization": f"Bearer {random_key()}"}):
            assert (await gateway.get(plugin.path("/hello"), headers=headers)).status == 401
            assert (await gateway.get(f"/api/v1/spaces/{plugin.space_id}/installations",
                                      headers=headers)).status == 401
    assert (await gateway.get(plugin.path("/hello"), headers={"X-API-Key": key})).status == 200
    assert (await gateway.get(plugin.path("/hello"), headers={"X-API-Key": foreign_key})).status == 403
    # The proxy knew the good keys from memory; only the API reads a key it holds (to refuse one
    # revoked a moment ago), and never one it does not.
    assert await calls(pool, caller_rows.API_KEY_BY_HASH) == 0
    assert (await gateway.get(f"/api/v1/spaces/{plugin.space_id}/installations",
                              headers={"X-API-Key": key})).status == 200
    assert await calls(pool, caller_rows.API_KEY_BY_HASH) == 1


async def test_with_postgres_stopped_unknown_keys_are_refused_at_once_known_ones_served(
        own_postgres: devservices.LocalPostgres, gateway: TestClient, pool: asyncpg.Pool, upstream: str) -> None:
    make = Factory(pool, JWT_SECRET)
    plugin = await make_plugin(pool, make, upstream)
    await until_status(gateway, plugin.path("/hello"), plugin.member, 200)
    key = await known_key(gateway, plugin)
    foreign_key = await known_key(gateway, await make_plugin(pool, make, upstream))
    foreign = make.auth(await make.member(await make.space(), "owner"))
    assert (await gateway.get(plugin.path("/hello"), headers=foreign)).status == 403
    await pool.close()
    cache = gateway.app[PROXY].callers

    own_postgres.stop()
    for _ in range(5):
        started = time.monotonic()
        assert (await gateway.get(plugin.path("/hello"), headers={"X-API-Key": random_key()})).status == 401
        assert (await gateway.get(f"/api/v1/spaces/{plugin.space_id}/installations",
                                  headers={"X-API-Key": random_key()})).status == 401
        assert time.monotonic() - started < 0.5  # no connection attempt was waited for
        assert (await gateway.get(plugin.path("/hello"), headers={"X-API-Key": key})).status == 200
        assert (await gateway.get(plugin.path("/hello"), headers={"X-API-Key": foreign_key})).status == 403
    # Memberships and users are used past their TTL, and the cache says so.
    await asyncio.sleep(TTL * 1.5)
    for _ in range(3):
        assert (await gateway.get(plugin.path("/hello"), headers=plugin.member)).status == 200
        assert (await gateway.get(plugin.path("/hello"), headers=foreign)).status == 403
    assert cache.serving_past_ttl
    state = cache.readiness()
    assert state["serving_past_ttl"] is True and state["past_ttl_for_seconds"] > 0
    assert state["api_keys"]["loaded"] is True and state["api_keys"]["keys"] == 2  # type: ignore[index]

    own_postgres.start()  # back: the refresher reads the entries again and they are current
    deadline = time.monotonic() + 10
    while cache.serving_past_ttl:
        assert time.monotonic() < deadline, "the entries were not refreshed after PostgreSQL came back"
        await asyncio.sleep(0.05)
    assert (await gateway.get(plugin.path("/hello"), headers=plugin.member)).status == 200
