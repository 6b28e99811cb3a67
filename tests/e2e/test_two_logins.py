"""The production setup of contract revision 3: the tables' owner migrates; `gateway serve` logs in
as a login that is only a member of GATEWAY_DB_ROLE (no superuser, no owner). Every cross-space
path must then work through its SECURITY DEFINER function, since forced row-level security holds
the functions' owners too: the route-table loader and its fingerprint, API keys by hash and their
last-used touches, installation_count, `gateway routes` and `gateway rotate-keys`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import ASSERTION_KEY, ENCRYPTION_KEYS, JWT_SECRET
from tests.e2e.conftest import ROOT, StartGateway
from tests.factories import Factory

APP_ROLE = "gateway_app"


@pytest.fixture
async def app_login(database_url: str, db: asyncpg.Pool) -> AsyncIterator[str]:
    """A LOGIN role that is a member of the app role and nothing else; its DSN."""
    login = f"pgw_login_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {login} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {APP_ROLE}")
    try:
        yield str(URL(database_url).with_user(login))
    finally:
        # Its sessions (the gateway's) are gone once the gateway stopped; drop what it may hold.
        await db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'")
        await db.execute(f"DROP ROLE IF EXISTS {login}")


async def _until(check: Any, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _cli(dsn: str, *args: str, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, cwd=ROOT,
        env={**clean, "DATABASE_URL": dsn, "GATEWAY_ENCRYPTION_KEYS": ENCRYPTION_KEYS, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_every_cross_space_path_works_for_a_member_login(start_gateway: StartGateway, app_login: str,
                                                               db: asyncpg.Pool, make: Factory,
                                                               aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Plugin-Key", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", upstream)
    server = await aiohttp_server(app)
    gateway = await start_gateway(1, DATABASE_URL=app_login)
    admin = await make.admin()
    vendor = await make.user()
    space = await make.space()
    space_admin = make.auth(await make.member(space, "admin"))
    slug = f"two-{uuid.uuid4().hex[:8]}"

    async with aiohttp.ClientSession(gateway.url) as http:
        ready = await (await http.get("/readyz")).json()
        assert ready["database_role"]["role"] == APP_ROLE
        assert ready["database_role"]["login"] == URL(app_login).user

        async def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
            response = await http.request(method, path, json=body, headers=headers)
            assert response.status < 300, f"{method} {path}: {response.status} {await response.text()}"
            return await response.json() if response.status != 204 else None

        service = await call("POST", "/api/v1/services", make.auth(vendor), {
            "name": "Two logins", "slug": slug, "version": "1", "provider": "t",
            "api_base_url": str(server.make_url("")).rstrip("/"), "api_auth_type": "api_key",
            "api_auth_config": {"header_name": "X-Plugin-Key"}})
        await call("POST", f"/api/v1/services/{service['id']}/routes", make.auth(vendor),
                   {"route_path": "/{rest:path}", "method": "GET", "target_url": "/{rest}"})
        await call("PUT", f"/api/v1/services/{service['id']}/status", admin, {"status": "approved"})
        # installation_count is written by the bookkeeper's definer trigger, not by the space admin.
        await call("POST", f"/api/v1/spaces/{space}/installations", space_admin,
                   {"service_id": service["id"], "credentials": {"api_key": "vendor-secret"}})
        assert await db.fetchval("SELECT installation_count FROM service_registry WHERE id = $1",
                                 uuid.UUID(service["id"])) == 1
        key = await call("POST", f"/api/v1/spaces/{space}/api-keys", space_admin, {"name": "ci", "role": "member"})

        # The loader (through its definer functions) picks the installation up; the key hash too.
        async def proxied() -> bool:
            response = await http.get(f"/spaces/{space}/plugins/{slug}/hello", headers={"X-API-Key": key["key"]})
            return response.status == 200
        await _until(proxied)
        assert seen[-1] == "vendor-secret"
        touched = await _until(lambda: db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                                                   uuid.UUID(key["id"])), within=30)
        assert touched is not None

    # The operator commands, with the same member login.
    code, out = await _cli(app_login, "routes")
    assert code == 0 and slug in out, out
    new_keys = f"k2:{'A' * 43},{ENCRYPTION_KEYS}"
    code, out = await _cli(app_login, "rotate-keys", GATEWAY_ENCRYPTION_KEYS=new_keys)
    assert code == 0 and "service_installations: " in out, out
    envelope = await db.fetchval("SELECT credentials FROM service_installations WHERE service_id = $1",
                                 uuid.UUID(service["id"]))
    assert envelope["kid"] == "k2"


async def test_serve_refuses_to_run_its_queries_as_a_superuser(database_url: str, db: asyncpg.Pool) -> None:
    role = f"pgw_super_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} NOLOGIN SUPERUSER")
    try:
        code, out = await _cli(database_url, "serve", "--workers", "1", GATEWAY_DB_ROLE=role,
                               GATEWAY_JWT_SECRET=JWT_SECRET, GATEWAY_PORT="0", GATEWAY_METRICS_PORT="0",
                               GATEWAY_ASSERTION_KEY=ASSERTION_KEY)
        assert code == 1, out
        assert "refusing to start" in out and "superuser" in out, out
    finally:
        await db.execute(f"DROP ROLE {role}")
