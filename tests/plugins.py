"""Arrange a plugin straight in the database (service, routes, installation), as the API would
leave it, for proxy tests that are about the proxy rather than the registry API."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from yarl import URL

from db.encryption import KeyRing, associated_data
from tests.conftest import ENCRYPTION_KEYS
from tests.factories import Factory

KEYRING = KeyRing.parse(ENCRYPTION_KEYS)

INSERT_SERVICE = """
INSERT INTO service_registry (name, slug, version, provider, status, api_base_url, api_auth_type, api_auth_config)
VALUES ($1, $1, '1', 'test', $2, $3, $4, $5) RETURNING id
"""
INSERT_ROUTE = """
INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url, options,
                                rate_limit, rate_limit_window, cache_enabled, cache_ttl)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, false), $10) RETURNING id
"""
INSERT_INSTALLATION = """
INSERT INTO service_installations (id, service_id, space_id, credentials, permissions, status)
VALUES ($1, $2, $3, $4, $5, $6)
"""


@dataclass
class Plugin:
    slug: str
    service_id: UUID
    space_id: UUID
    installation_id: UUID
    member: dict[str, str]  # headers of a member of the space
    owner: dict[str, str]
    routes: dict[str, UUID] = field(default_factory=dict)

    def path(self, rest: str) -> URL:
        return URL(f"/spaces/{self.space_id}/plugins/{self.slug}{rest}", encoded=True)


async def add_route(db: asyncpg.Pool, service_id: UUID, route_path: str, target_url: str, *, method: str = "*",
                    installation_id: UUID | None = None, options: dict[str, Any] | None = None,
                    **columns: Any) -> UUID:
    return await db.fetchval(INSERT_ROUTE, service_id, installation_id, route_path, method, target_url,
                             options or {}, columns.get("rate_limit"), columns.get("rate_limit_window"),
                             columns.get("cache_enabled"), columns.get("cache_ttl"))


async def make_plugin(db: asyncpg.Pool, make: Factory, base_url: str, *,
                      routes: dict[str, str] | None = None, status: str = "approved",
                      auth_type: str | None = "api_key", auth_config: dict[str, Any] | None = None,
                      credentials: dict[str, str] | None = None, min_role: str = "viewer",
                      installation_status: str = "active", options: dict[str, Any] | None = None) -> Plugin:
    """`routes` maps route_path → target_url (relative to base_url); method `*`."""
    slug = f"p-{uuid.uuid4().hex[:10]}"
    service_id = await db.fetchval(INSERT_SERVICE, slug, status, base_url, auth_type,
                                   auth_config if auth_config is not None else {"header_name": "X-Plugin-Key"})
    space = await make.space()
    installation_id = uuid.uuid4()
    sealed = KEYRING.seal(credentials if credentials is not None else {"api_key": f"secret-{slug}"},
                          associated_data("service_installations", installation_id, "credentials"))
    await db.execute(INSERT_INSTALLATION, installation_id, service_id, space, sealed,
                     {"min_role": min_role}, installation_status)
    plugin = Plugin(slug, service_id, space, installation_id,
                    make.auth(await make.member(space, "member")), make.auth(await make.member(space, "owner")))
    for route_path, target in (routes if routes is not None else {"/{rest:path}": "/{rest}"}).items():
        plugin.routes[route_path] = await add_route(db, service_id, route_path, target, options=options)
    return plugin


async def until_status(client: TestClient, path: URL | str, headers: dict[str, str], expected: int,
                       within: float = 2.0, method: str = "GET") -> ClientResponse:
    """Poll until the proxy answers `expected` (the route table follows the database within ~1 s)."""
    deadline = time.monotonic() + within
    while True:
        response = await client.request(method, path, headers=headers, allow_redirects=False)
        await response.read()
        if response.status == expected or time.monotonic() > deadline:
            assert response.status == expected, (response.status, await response.text())
            return response
        await asyncio.sleep(0.02)


def problem(body: bytes) -> dict[str, Any]:
    return orjson.loads(body)


async def raw_request(port: int, request_line: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """Send bytes exactly as written: aiohttp's client would normalize dot segments itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "gateway", "Connection": "close", **headers}.items())
    writer.write(f"{request_line}\r\n{head}\r\n".encode() + body)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return status_line


async def install_in(db: asyncpg.Pool, plugin: Plugin, space_id: UUID) -> UUID:
    """Install an existing plugin in another space too, with credentials of its own."""
    installation_id = uuid.uuid4()
    sealed = KEYRING.seal({"api_key": f"secret-{space_id}"},
                          associated_data("service_installations", installation_id, "credentials"))
    await db.execute(INSERT_INSTALLATION, installation_id, plugin.service_id, space_id, sealed, {}, "active")
    return installation_id
