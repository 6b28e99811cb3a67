"""The last-known-good snapshot (GATEWAY_SNAPSHOT_PATH): written after each load, encrypted and
owner-only; a node starting while PostgreSQL does not answer serves from it."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from db.encryption import KeyRing, generate_key_ring_entry
from gateway.dev import services as devservices
from gateway.proxy.runtime import PROXY
from gateway.snapshot import Snapshot, SnapshotUnusable
from tests.conftest import ENCRYPTION_KEYS, gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import make_plugin, until_status


async def wait_for(path: Path, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, "no snapshot written"
        await asyncio.sleep(0.05)


async def test_a_node_without_postgres_serves_from_the_snapshot(database_url: str, make: Factory, db: asyncpg.Pool,
                                                                aiohttp_server: Any, tmp_path: Path) -> None:
    async def echo_key(request: web.Request) -> web.Response:
        return web.json_response({"ok": request.headers.get("X-Plugin-Key")})

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", echo_key)
    server = await aiohttp_server(upstream)
    path = tmp_path / "state" / "snapshot"
    async with gateway_client(make_settings(database_url, snapshot_path=str(path))) as live:
        plugin = await make_plugin(db, make, str(server.make_url("")).rstrip("/"))
        await until_status(live, plugin.path("/x"), plugin.member, 200)  # the member's role is now cached
        await live.app[PROXY].loader.reload()  # a load after that writes it with the role
        await wait_for(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    assert f"secret-{plugin.slug}".encode() not in text and plugin.slug.encode() not in text  # encrypted

    unreachable = f"postgresql://gateway@127.0.0.1:{devservices.free_port()}/gateway"
    async with gateway_client(make_settings(unreachable, snapshot_path=str(path))) as node:
        deadline = time.monotonic() + 10
        while (ready := await node.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, await ready.text()
            await asyncio.sleep(0.1)
        body = await ready.json()
        assert body["route_table"]["source"] == "snapshot" and body["database"] == "down"
        response = await node.get(plugin.path("/x"), headers=plugin.member)
        assert response.status == 200, await response.text()
        assert (await response.json())["ok"] == f"secret-{plugin.slug}"  # credentials from the snapshot
        # A caller the snapshot does not know cannot be looked up now: 503, not a guess.
        stranger = make.auth(await make.user())
        assert (await node.get(plugin.path("/x"), headers=stranger)).status == 503


async def test_live_data_takes_over(client: Any, tmp_path: Path) -> None:
    loader = client.app[PROXY].loader
    await loader.restore(([], [], []), time.time() - 100)
    assert loader.source == "snapshot"
    await loader.reload()
    assert loader.source == "database" and loader.age < 5


def test_a_snapshot_of_another_level_or_key_is_not_used(tmp_path: Path) -> None:
    ring = KeyRing.parse(ENCRYPTION_KEYS)
    path = tmp_path / "s"
    Snapshot(path, ring, "20250101000900").write({"routes": [], "installations": [], "assignments": []})
    with pytest.raises(SnapshotUnusable, match="migration level"):
        Snapshot(path, ring, "20250101001300").read()
    with pytest.raises(SnapshotUnusable, match="no key"):
        Snapshot(path, KeyRing.parse(generate_key_ring_entry("other")), "20250101000900").read()
    path.write_bytes(b"garbage")
    with pytest.raises(SnapshotUnusable, match="not a snapshot"):
        Snapshot(path, ring, "20250101000900").read()
    assert Snapshot(tmp_path / "none", ring, "x").read() is None
    # Another key of the ring opens it (rotation): the ring's first key sealed it.
    rotated = KeyRing.parse(f"{generate_key_ring_entry('new')},{ENCRYPTION_KEYS}")
    Snapshot(path, ring, "1").write({"routes": [{"id": "00000000-0000-0000-0000-000000000001", "updated_at": None}]})
    payload, _ = Snapshot(path, rotated, "1").read()  # type: ignore[misc]
    assert str(payload["routes"][0]["id"]) == "00000000-0000-0000-0000-000000000001"
