"""With PostgreSQL stopped, the proxy keeps serving from memory; API writes answer 503.

This test starts a PostgreSQL cluster of its own and stops only that one.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from db.migrate import migrate
from db.pool import create_pool
from gateway.dev import services as devservices
from tests.conftest import gateway_client, JWT_SECRET, make_settings
from tests.factories import Factory
from tests.plugins import make_plugin, until_status


@pytest.fixture
async def own_postgres() -> AsyncIterator[devservices.LocalPostgres]:
    with tempfile.TemporaryDirectory(prefix="pgw-outage-") as tmp:
        Path(tmp).chmod(0o755)
        server = devservices.start_postgres(Path(tmp) / "data")
        try:
            await migrate(server.dsn)
            yield server
        finally:
            server.stop()


async def test_proxy_serves_through_a_database_outage(own_postgres: devservices.LocalPostgres,
                                                      aiohttp_server: Any) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", hello)
    upstream: TestServer = await aiohttp_server(upstream_app)

    pool: asyncpg.Pool = await create_pool(own_postgres.dsn, min_size=1, max_size=2)
    make = Factory(pool, JWT_SECRET)
    async with gateway_client(make_settings(own_postgres.dsn)) as client:
        plugin = await make_plugin(pool, make, str(upstream.make_url("")).rstrip("/"))
        await until_status(client, plugin.path("/hello"), plugin.member, 200)
        await pool.close()

        own_postgres.stop()
        for _ in range(5):
            response = await client.get(plugin.path("/hello"), headers=plugin.member)
            assert response.status == 200
        ready = await client.get("/readyz")
        body = await ready.json()
        assert ready.status == 200 and body["database"] == "down"
        assert body["route_table"]["stale"] is True
        write = await client.post(f"/api/v1/spaces/{plugin.space_id}/api-keys", headers=plugin.owner,
                                  json={"name": "k"})
        assert write.status == 503 and write.headers["Retry-After"]
        assert write.headers["Content-Type"] == "application/problem+json"

        own_postgres.start()  # back again: the listener reconnects and changes flow once more
        await until_status(client, "/readyz", {}, 200)
