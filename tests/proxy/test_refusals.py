"""Who the proxy refuses, and with which status (the contract's "Callers" and "The proxy")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import gateway_client, JWT_SECRET, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.raw_path})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def plugin(db: asyncpg.Pool, make: Factory, upstream: str, client: TestClient) -> Plugin:
    plugin = await make_plugin(db, make, upstream, routes={"/reports/{id}": "/reports/{id}"})
    await until_status(client, plugin.path("/reports/1"), plugin.member, 200)
    return plugin


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing_input}.{signature}"


async def assert_refused(client: TestClient, plugin: Plugin, headers: dict[str, str], status: int) -> dict[str, Any]:
    response = await client.get(plugin.path("/reports/1"), headers=headers)
    assert response.status == status
    assert response.headers["Content-Type"] == "application/problem+json"
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status
    return body


async def test_caller_from_another_space_is_forbidden(client: TestClient, make: Factory, plugin: Plugin) -> None:
    other_space = await make.space()
    outsider = make.auth(await make.member(other_space, "owner"))
    await assert_refused(client, plugin, outsider, 403)
    # Not even a platform admin who is not a member calls a space's plugins.
    await assert_refused(client, plugin, await make.admin(), 403)


async def test_api_key_of_another_space_and_revoked_key(client: TestClient, make: Factory, plugin: Plugin,
                                                        db: asyncpg.Pool, upstream: str) -> None:
    other = await make_plugin(db, make, upstream)
    foreign_key = await (await client.post(f"/api/v1/spaces/{other.space_id}/api-keys", headers=other.owner,
                                           json={"name": "k", "role": "owner"})).json()
    await assert_refused(client, plugin, {"X-API-Key": foreign_key["key"]}, 403)

    key = await (await client.post(f"/api/v1/spaces/{plugin.space_id}/api-keys", headers=plugin.owner,
                                   json={"name": "k", "role": "member"})).json()
    await until_status(client, plugin.path("/reports/1"), {"X-API-Key": key["key"]}, 200)
    revoked = await client.delete(f"/api/v1/spaces/{plugin.space_id}/api-keys/{key['id']}", headers=plugin.owner)
    assert revoked.status == 204
    await until_status(client, plugin.path("/reports/1"), {"X-API-Key": key["key"]}, 401, within=1.0)
    await assert_refused(client, plugin, {"Authorization": f"Bearer {key['key']}"}, 401)


async def test_bad_tokens(client: TestClient, make: Factory, plugin: Plugin) -> None:
    member = plugin.member["Authorization"].split()[1]
    sub = json.loads(base64.urlsafe_b64decode(member.split(".")[1] + "=="))["sub"]
    now = int(time.time())
    expired = forged({"alg": "HS256", "typ": "JWT"}, {"sub": sub, "exp": now - 120}, JWT_SECRET.encode())
    unsigned = forged({"alg": "none", "typ": "JWT"}, {"sub": sub, "exp": now + 600}, None)
    wrong_secret = forged({"alg": "HS256", "typ": "JWT"}, {"sub": sub, "exp": now + 600}, b"not-the-secret")
    no_exp = forged({"alg": "HS256", "typ": "JWT"}, {"sub": sub}, JWT_SECRET.encode())
    for token in (expired, unsigned, wrong_secret, no_exp, "garbage"):
        await assert_refused(client, plugin, {"Authorization": f"Bearer {token}"}, 401)
    await assert_refused(client, plugin, {}, 401)
    unknown_user = make.auth(__import__("uuid").uuid4())
    await assert_refused(client, plugin, unknown_user, 401)


async def test_hs256_signed_with_the_rsa_public_key(database_url: str, make: Factory, db: asyncpg.Pool,
                                                     upstream: str) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    settings = make_settings(database_url, jwt_secret="", jwt_public_key=public_pem.decode())
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, upstream)
        sub = json.loads(base64.urlsafe_b64decode(plugin.member["Authorization"].split()[1].split(".")[1] + "=="))["sub"]
        claims = {"sub": sub, "exp": int(time.time()) + 600}
        confused = forged({"alg": "HS256", "typ": "JWT"}, claims, public_pem)
        import jwt as pyjwt

        genuine = pyjwt.encode(claims, private, algorithm="RS256")
        await until_status(client, plugin.path("/x"), {"Authorization": f"Bearer {genuine}"}, 200)
        response = await client.get(plugin.path("/x"), headers={"Authorization": f"Bearer {confused}"})
        assert response.status == 401


async def test_plugins_the_space_cannot_call(client: TestClient, make: Factory, db: asyncpg.Pool,
                                             plugin: Plugin, upstream: str) -> None:
    pending = await make_plugin(db, make, upstream, status="pending")
    inactive = await make_plugin(db, make, upstream, installation_status="inactive")
    for p in (pending, inactive):
        assert (await client.get(p.path("/x"), headers=p.member)).status == 404
    # Uninstalled through the API: gone from the proxy within a second.
    gone = await client.delete(f"/api/v1/spaces/{plugin.space_id}/installations/{plugin.installation_id}",
                               headers=plugin.owner)
    assert gone.status == 204
    await until_status(client, plugin.path("/reports/1"), plugin.member, 404, within=1.0)
    # A slug the space never installed, and a space id that is not a UUID.
    assert (await client.get(f"/spaces/{plugin.space_id}/plugins/never-installed/x", headers=plugin.member)).status == 404
    assert (await client.get("/spaces/not-a-uuid/plugins/x/y", headers=plugin.member)).status == 404


async def test_min_role_and_unrouted_paths(client: TestClient, make: Factory, db: asyncpg.Pool, upstream: str) -> None:
    plugin = await make_plugin(db, make, upstream, min_role="admin", routes={"/reports/{id}": "/reports/{id}"})
    await until_status(client, plugin.path("/reports/1"), plugin.owner, 200)
    assert (await client.get(plugin.path("/reports/1"), headers=plugin.member)).status == 403
    assert (await client.get(plugin.path("/nothing"), headers=plugin.owner)).status == 404


async def test_method_not_allowed_lists_allow(client: TestClient, make: Factory, db: asyncpg.Pool, upstream: str) -> None:
    from tests.plugins import add_route

    plugin = await make_plugin(db, make, upstream, routes={})
    await add_route(db, plugin.service_id, "/items", "/items", method="GET")
    await add_route(db, plugin.service_id, "/items", "/items", method="POST")
    await until_status(client, plugin.path("/items"), plugin.member, 200)
    response = await client.delete(plugin.path("/items"), headers=plugin.member)
    assert response.status == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_removed_member_is_refused_within_a_second(client: TestClient, plugin: Plugin, db: asyncpg.Pool) -> None:
    from uuid import UUID

    sub = json.loads(base64.urlsafe_b64decode(plugin.member["Authorization"].split()[1].split(".")[1] + "=="))["sub"]
    await db.execute("DELETE FROM space_members WHERE space_id = $1 AND user_id = $2", plugin.space_id, UUID(sub))
    await until_status(client, plugin.path("/reports/1"), plugin.member, 403, within=1.0)


async def test_api_key_use_is_recorded_without_a_write_per_request(client: TestClient, plugin: Plugin,
                                                                   db: asyncpg.Pool) -> None:
    from gateway.proxy.runtime import PROXY

    key = await (await client.post(f"/api/v1/spaces/{plugin.space_id}/api-keys", headers=plugin.owner,
                                   json={"name": "k", "role": "member"})).json()
    await until_status(client, plugin.path("/reports/1"), {"X-API-Key": key["key"]}, 200)
    for _ in range(10):
        assert (await client.get(plugin.path("/reports/1"), headers={"X-API-Key": key["key"]})).status == 200
    assert await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", __import__("uuid").UUID(key["id"])) is None
    await client.app[PROXY].callers.flush_last_used()  # what the periodic flusher does
    assert await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                             __import__("uuid").UUID(key["id"])) is not None
