"""Upstream safety at request time: with private upstreams not allowed, a target that is, or
resolves to, a loopback/private address is refused with 502 and never connected to."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import make_plugin, until_status


async def test_private_targets_refused_at_request_time(database_url: str, make: Factory, db: asyncpg.Pool,
                                                       aiohttp_server: Any) -> None:
    reached: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(text="internal")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server: TestServer = await aiohttp_server(app)
    port = server.port
    settings = make_settings(database_url, allow_private_upstreams=False)
    async with gateway_client(settings) as client:
        # Rows written straight into the table skip the API's registration check: the proxy
        # must still refuse them.
        literal = await make_plugin(db, make, f"http://127.0.0.1:{port}")
        mapped = await make_plugin(db, make, f"http://[::ffff:127.0.0.1]:{port}")
        by_name = await make_plugin(db, make, f"http://localhost:{port}")
        metadata = await make_plugin(db, make, "http://169.254.169.254")
        for plugin in (literal, mapped, by_name, metadata):
            response = await until_status(client, plugin.path("/secrets"), plugin.member, 502)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert "127.0.0.1" not in await response.text()
    assert reached == []
