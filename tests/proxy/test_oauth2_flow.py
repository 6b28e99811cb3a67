"""OAuth2 client credentials through the proxy: a token from a real token endpoint, reused,
and on an upstream 401 dropped and the bodiless request retried once with a new one."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.factories import Factory
from tests.plugins import make_plugin, until_status


async def test_token_fetched_reused_and_renewed_on_401(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                       aiohttp_server: Any) -> None:
    issued: list[str] = []
    revoked: set[str] = set()
    seen: list[tuple[str, str | None]] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "client_credentials"
        value = f"token-{len(issued) + 1}"
        issued.append(value)
        return web.json_response({"access_token": value, "token_type": "Bearer", "expires_in": 3600})

    async def api(request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        seen.append((request.method, bearer))
        if bearer in revoked:
            return web.json_response({"error": "revoked"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_route("*", "/api/{tail:.*}", api)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    plugin = await make_plugin(db, make, base + "/api", auth_type="oauth2",
                               auth_config={"token_url": base + "/token", "scope": "read"},
                               credentials={"client_id": "cid", "client_secret": "oauth-secret-1"})
    await until_status(client, plugin.path("/a"), plugin.member, 200)
    for _ in range(5):
        assert (await client.get(plugin.path("/a"), headers=plugin.member)).status == 200
    assert issued == ["token-1"]  # one token for all six calls

    revoked.add("token-1")
    retried = await client.get(plugin.path("/a"), headers=plugin.member)
    assert retried.status == 200 and issued == ["token-1", "token-2"]
    assert seen[-2:] == [("GET", "token-1"), ("GET", "token-2")]

    revoked.add("token-2")
    posted = await client.post(plugin.path("/a"), headers=plugin.member, data=b"payload")
    assert posted.status == 401  # a body is streamed once: no retry, the caller gets the 401
    assert (await client.get(plugin.path("/a"), headers=plugin.member)).status == 200
    assert issued == ["token-1", "token-2", "token-3"]
