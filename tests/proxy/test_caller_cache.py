"""The proxy's caller cache: a change announced while a read is in flight is not lost, and
GATEWAY_CALLER_CACHE_TTL bounds a change whose notification never came.

Reads are held with asyncio.Events around the real queries (the read itself runs against the
test's PostgreSQL, before the change); notifications are real (the triggers) or suppressed for
real (session_replication_role = replica, under which no ordinary trigger fires).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from auth.api_keys import hash_api_key
from db import callers as caller_rows
from gateway.proxy.callers import CallerCache
from gateway.proxy.key_hashes import Verdict
from gateway.proxy.runtime import PROXY
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def plugin(db: asyncpg.Pool, make: Factory, upstream: str, client: TestClient) -> Plugin:
    plugin = await make_plugin(db, make, upstream)
    await until_status(client, plugin.path("/hello"), plugin.member, 200)
    return plugin


async def outsider(make: Factory) -> dict[str, str]:
    """A caller from another space: refused throughout, whatever the cache does."""
    return make.auth(await make.member(await make.space(), "owner"))


async def until_changes(cache: CallerCache, seen: int, within: float = 2.0) -> None:
    """Wait until the cache has been told of a change after `seen` (the NOTIFY came back)."""
    deadline = time.monotonic() + within
    while cache.changes <= seen:
        assert time.monotonic() < deadline, "no change notification reached the cache"
        await asyncio.sleep(0.005)


class Held:
    """Wraps a db.callers read: the real query runs, then the result waits for `release`."""

    def __init__(self, real: Any, when: Any) -> None:
        self.real, self.when = real, when
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, conn: Any, *args: Any) -> Any:
        result = await self.real(conn, *args)
        if self.when(*args):
            self.read.set()
            await self.release.wait()
        return result


async def test_a_removal_notified_while_the_lookup_is_in_flight_is_not_lost(
        client: TestClient, make: Factory, plugin: Plugin, db: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = client.app[PROXY].callers
    user = await make.member(plugin.space_id, "member")
    caller, foreign = make.auth(user), await outsider(make)
    held = Held(caller_rows.space_role, lambda space_id, user_id: user_id == user)
    monkeypatch.setattr(caller_rows, "space_role", held)

    request = asyncio.create_task(client.get(plugin.path("/hello"), headers=caller))
    await asyncio.wait_for(held.read.wait(), 5)  # read: still a member
    seen = cache.changes
    await db.execute("DELETE FROM space_members WHERE space_id = $1 AND user_id = $2", plugin.space_id, user)
    await until_changes(cache, seen)  # the removal is announced while the read is held
    held.release.set()

    # The request began before the removal, so the answer it read is its own to use...
    assert (await request).status == 200
    # ...but it was not stored: the removal is in force for the next request.
    assert (plugin.space_id, user) not in cache.roles
    assert (await client.get(plugin.path("/hello"), headers=caller)).status == 403
    assert (await client.get(plugin.path("/hello"), headers=foreign)).status == 403


async def test_a_user_deleted_while_the_lookup_is_in_flight_is_refused_next(
        client: TestClient, make: Factory, plugin: Plugin, db: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = client.app[PROXY].callers
    user = await make.member(plugin.space_id, "member")
    caller = make.auth(user)
    held = Held(caller_rows.user_exists, lambda user_id: user_id == user)
    monkeypatch.setattr(caller_rows, "user_exists", held)

    request = asyncio.create_task(client.get(plugin.path("/hello"), headers=caller))
    await asyncio.wait_for(held.read.wait(), 5)
    seen = cache.changes
    await db.execute("DELETE FROM users WHERE id = $1", user)
    await until_changes(cache, seen)
    held.release.set()
    await request
    assert user not in cache.users
    assert (await client.get(plugin.path("/hello"), headers=caller)).status == 401


async def test_a_key_revoked_while_the_key_set_is_read_is_refused_after_it(
        client: TestClient, make: Factory, plugin: Plugin, db: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = client.app[PROXY].callers
    created = await client.post(f"/api/v1/spaces/{plugin.space_id}/api-keys", headers=plugin.owner,
                                json={"name": "held", "role": "member"})
    key = (await created.json())["key"]
    foreign = await client.post(f"/api/v1/spaces/{(other := await make.space())}/api-keys",
                                headers=make.auth(await make.member(other, "owner")), json={"name": "f"})
    foreign_key = (await foreign.json())["key"]
    await until_status(client, plugin.path("/hello"), {"X-API-Key": key}, 200)
    held = Held(caller_rows.live_api_keys, lambda: True)
    monkeypatch.setattr(caller_rows, "live_api_keys", held)

    cache.on_change({"table": "*", "op": "RESYNC"})  # what the change listener says on reconnecting
    await asyncio.wait_for(held.read.wait(), 5)  # the snapshot holds the key
    seen = cache.changes
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", hash_api_key(key))
    await until_changes(cache, seen)
    held.release.set()

    # The snapshot is applied, then the key notified meanwhile is read again: it is gone.
    assert await cache.key_hashes.settle(5)
    assert cache.key_hashes.verdict(hash_api_key(key))[0] is Verdict.UNKNOWN
    assert (await client.get(plugin.path("/hello"), headers={"X-API-Key": key})).status == 401
    assert (await client.get(plugin.path("/hello"), headers={"X-API-Key": foreign_key})).status == 403


@pytest.fixture
async def short_ttl(database_url: str) -> AsyncIterator[TestClient]:
    async with gateway_client(make_settings(database_url, caller_cache_ttl=TTL)) as client:
        yield client


TTL = 1.0


async def quietly(db: asyncpg.Pool, sql: str, *args: Any) -> None:
    """Change a row without telling anyone: no trigger fires under session_replication_role=replica."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql, *args)


@pytest.mark.parametrize("what", ["membership", "user"])
async def test_a_change_never_notified_is_in_force_after_about_the_ttl(
        short_ttl: TestClient, make: Factory, db: asyncpg.Pool, upstream: str, what: str) -> None:
    client, cache = short_ttl, short_ttl.app[PROXY].callers
    plugin = await make_plugin(db, make, upstream)
    user = await make.member(plugin.space_id, "member")
    caller, foreign = make.auth(user), await outsider(make)
    await until_status(client, plugin.path("/hello"), caller, 200)
    seen = cache.changes

    if what == "membership":
        await quietly(db, "DELETE FROM space_members WHERE space_id = $1 AND user_id = $2", plugin.space_id, user)
    else:
        await quietly(db, "DELETE FROM users WHERE id = $1", user)
    removed = time.monotonic()
    await until_status(client, plugin.path("/hello"), caller, 403 if what == "membership" else 401,
                       within=TTL + 1.0)
    took = time.monotonic() - removed
    assert took <= TTL + 0.3, f"still honoured {took:.2f} s after the removal, with a {TTL} s TTL"
    assert cache.changes == seen, "a notification came after all: this tested nothing"
    assert (await client.get(plugin.path("/hello"), headers=foreign)).status == 403


async def test_entries_are_refreshed_in_the_background_not_on_the_request_path(
        short_ttl: TestClient, make: Factory, db: asyncpg.Pool, upstream: str) -> None:
    client, cache = short_ttl, short_ttl.app[PROXY].callers
    plugin = await make_plugin(db, make, upstream)
    foreign = await outsider(make)
    await until_status(client, plugin.path("/hello"), plugin.member, 200)
    await client.get(plugin.path("/hello"), headers=foreign)
    on_path, background = cache.request_reads, cache.background_reads

    deadline = time.monotonic() + 4 * TTL
    while time.monotonic() < deadline:
        assert (await client.get(plugin.path("/hello"), headers=plugin.member)).status == 200
        assert (await client.get(plugin.path("/hello"), headers=foreign)).status == 403
        await asyncio.sleep(0.02)
    assert cache.request_reads == on_path  # every read in those four TTLs was the refresher's
    assert cache.background_reads - background >= 3 * 2  # users and memberships, each TTL
    assert not cache.serving_past_ttl and cache.stale_since is None
