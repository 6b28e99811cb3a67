"""End to end: vendor registers, admin approves, space admin installs, a member calls through."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from tests.factories import Factory


class Upstream:
    """A real plugin upstream on loopback that records what reached it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"method": request.method, "path": request.raw_path,
                              "headers": dict(request.headers), "body": body})
        return web.json_response({"ok": True, "path": request.raw_path},
                                 headers={"Set-Cookie": "plugin=1", "X-Plugin": "yes"})


async def wait_for_status(client: TestClient, path: str | URL, headers: dict[str, str], expected: int,
                          within: float = 1.0) -> float:
    """Poll until the proxy answers `expected`; returns how long it took."""
    started = time.monotonic()
    while True:
        response = await client.get(path, headers=headers)
        await response.read()
        if response.status == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still {response.status} after {within}s"
        await asyncio.sleep(0.02)


async def register_plugin(client: TestClient, make: Factory, upstream_url: str, **service: Any) -> dict[str, Any]:
    vendor = make.auth(await make.user())
    body = {"name": "Reports", "slug": f"reports-{uuid.uuid4().hex[:8]}", "version": "1.0", "provider": "Acme",
            "api_base_url": upstream_url + "/v1", "api_auth_type": "api_key",
            "api_auth_config": {"header_name": "X-Plugin-Key"}, **service}
    created = await client.post("/api/v1/services", json=body, headers=vendor)
    assert created.status == 201, await created.text()
    svc = await created.json()
    route = await client.post(f"/api/v1/services/{svc['id']}/routes", headers=vendor,
                              json={"route_path": "/reports/{id}", "method": "GET", "target_url": "/reports/{id}"})
    assert route.status == 201, await route.text()
    approved = await client.put(f"/api/v1/services/{svc['id']}/status", json={"status": "approved"},
                                headers=await make.admin())
    assert approved.status == 200
    return {**svc, "vendor": vendor}


async def test_member_call_reaches_upstream_with_injected_identity(
        client: TestClient, make: Factory, aiohttp_server: Any) -> None:
    upstream = Upstream()
    server: TestServer = await aiohttp_server(upstream.app)
    plugin = await register_plugin(client, make, str(server.make_url("")).rstrip("/"))

    space = await make.space()
    admin = await make.member(space, "admin")
    installed = await client.post(f"/api/v1/spaces/{space}/installations", headers=make.auth(admin),
                                  json={"service_id": plugin["id"], "credentials": {"api_key": "plugin-secret-1"}})
    assert installed.status == 201, await installed.text()
    installation = await installed.json()

    member = await make.member(space, "member")
    caller = {**make.auth(member), "Cookie": "session=platform-cookie", "X-Request-ID": "trace-123",
              "X-Gateway-User-Id": "spoofed"}
    # encoded=True: the test client must send the query as written, or it normalizes %2F itself.
    path = URL(f"/spaces/{space}/plugins/{plugin['slug']}/reports/42?b=2&a=%2F", encoded=True)
    await wait_for_status(client, path, caller, 200)

    response = await client.get(path, headers=caller)
    assert response.status == 200
    assert "Set-Cookie" not in response.headers and response.headers["X-Plugin"] == "yes"
    assert response.headers["X-Request-ID"] == "trace-123"
    seen = upstream.requests[-1]
    assert seen["path"] == "/v1/reports/42?b=2&a=%2F"  # base path kept, query byte for byte
    headers = seen["headers"]
    assert headers["X-Plugin-Key"] == "plugin-secret-1"
    assert "Authorization" not in headers and "Cookie" not in headers and "X-API-Key" not in headers
    assert headers["X-Gateway-Space-Id"] == str(space)
    assert headers["X-Gateway-User-Id"] == str(member)
    assert headers["X-Gateway-Installation-Id"] == installation["id"]
    assert headers["X-Request-ID"] == "trace-123"
    assert headers["X-Forwarded-Proto"] == "http" and headers["X-Forwarded-For"]

    keys = await (await client.get("/.well-known/jwks.json")).json()
    assert all("d" not in key for key in keys["keys"])  # public keys only
    signing_key = jwt.PyJWKSet.from_dict(keys)[jwt.get_unverified_header(headers["X-Gateway-Assertion"])["kid"]]
    claims = jwt.decode(headers["X-Gateway-Assertion"], signing_key.key, algorithms=["ES256"],
                        audience=plugin["slug"], issuer="plugin-gateway")
    assert claims["sub"] == str(member) and claims["space_id"] == str(space)
    assert claims["installation_id"] == installation["id"] and claims["role"] == "member"
    assert claims["exp"] - claims["iat"] <= 300

    # An API key of the space: its own credential is not forwarded either.
    key = await (await client.post(f"/api/v1/spaces/{space}/api-keys", headers=make.auth(admin),
                                   json={"name": "ci", "role": "viewer"})).json()
    by_key = await client.get(path, headers={"X-API-Key": key["key"]})
    assert by_key.status == 200
    headers = upstream.requests[-1]["headers"]
    assert "X-API-Key" not in headers and "X-Gateway-User-Id" not in headers
    assert headers["X-Plugin-Key"] == "plugin-secret-1"
    assert jwt.decode(headers["X-Gateway-Assertion"], signing_key.key, algorithms=["ES256"],
                      audience=plugin["slug"])["sub"] == f"api_key:{key['id']}"


async def test_route_added_through_the_api_serves_within_a_second(
        client: TestClient, make: Factory, aiohttp_server: Any) -> None:
    upstream = Upstream()
    server = await aiohttp_server(upstream.app)
    plugin = await register_plugin(client, make, str(server.make_url("")).rstrip("/"))
    space = await make.space()
    admin = await make.member(space, "owner")
    await client.post(f"/api/v1/spaces/{space}/installations", headers=make.auth(admin),
                      json={"service_id": plugin["id"], "credentials": {"api_key": "k"}})
    caller = make.auth(admin)
    base = f"/spaces/{space}/plugins/{plugin['slug']}"
    await wait_for_status(client, base + "/reports/1", caller, 200)
    assert (await client.get(base + "/status", headers=caller)).status == 404

    created = await client.post(f"/api/v1/services/{plugin['id']}/routes", headers=plugin["vendor"],
                                json={"route_path": "/status", "method": "GET", "target_url": "/health"})
    assert created.status == 201
    took = await wait_for_status(client, base + "/status", caller, 200, within=1.0)
    assert upstream.requests[-1]["path"] == "/v1/health"
    assert took < 1.0

    route_id = (await created.json())["id"]
    assert (await client.delete(f"/api/v1/services/{plugin['id']}/routes/{route_id}",
                                headers=plugin["vendor"])).status == 204
    await wait_for_status(client, base + "/status", caller, 404, within=1.0)
