"""The management proxy (contract revision 3) end to end, against a loopback plugin upstream:
who may call, which instance service, whose credentials, the instance headers, last_used."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from db.encryption import associated_data
from gateway.proxy.runtime import PROXY
from tests.factories import Factory
from tests.plugins import KEYRING, Plugin, make_plugin, until_status


class Upstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers) | {"path": request.path})
        return web.json_response({"managed": True})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    yield up, str(server.make_url("")).rstrip("/")


async def instance_service(db: asyncpg.Pool, space: UUID) -> tuple[UUID, UUID]:
    instance = await db.fetchval("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                 "VALUES ($1, 'vm', 'vm', 'h') RETURNING id", space)
    service = await db.fetchval("INSERT INTO instance_services (instance_id, name, type) "
                                "VALUES ($1, 'db', 'database') RETURNING id", instance)
    return instance, service


async def assign(db: asyncpg.Pool, instance_service_id: UUID, plugin: Plugin,
                 credentials: dict[str, str] | None) -> UUID:
    assignment = uuid.uuid4()
    sealed = (KEYRING.seal(credentials, associated_data("service_management_assignments", assignment, "credentials"))
              if credentials else {})
    await db.execute("INSERT INTO service_management_assignments (id, instance_service_id, plugin_id, credentials) "
                     "VALUES ($1, $2, $3, $4)", assignment, instance_service_id, plugin.service_id, sealed)
    return assignment


def manage(space: UUID, instance_service_id: UUID, rest: str = "/status") -> URL:
    return URL(f"/spaces/{space}/instance-services/{instance_service_id}/manage{rest}", encoded=True)


async def test_an_admin_calls_the_assigned_plugin_with_the_assignments_credential(
        client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    instance, target = await instance_service(db, plugin.space_id)
    assignment = await assign(db, target, plugin, {"api_key": "assignment-secret"})
    response = await until_status(client, manage(plugin.space_id, target), plugin.owner, 200)
    assert (await response.json()) == {"managed": True}
    seen = up.seen[-1]
    assert seen["path"] == "/status"
    assert seen["X-Plugin-Key"] == "assignment-secret"  # not the installation's
    assert seen["X-Gateway-Instance-Service-Id"] == str(target) and seen["X-Gateway-Instance-Id"] == str(instance)
    claims = jwt.decode(seen["X-Gateway-Assertion"], options={"verify_signature": False})
    assert claims["instance_service_id"] == str(target) and claims["installation_id"] == str(plugin.installation_id)
    # The plugin proxy's own calls keep the installation's credential.
    await until_status(client, plugin.path("/x"), plugin.member, 200)
    assert up.seen[-1]["X-Plugin-Key"] == f"secret-{plugin.slug}" and "X-Gateway-Instance-Id" not in up.seen[-1]
    # last_used, written in the background (at most once a minute per assignment).
    await client.app[PROXY].assignment_touches.flush()
    assert await db.fetchval("SELECT last_used FROM service_management_assignments WHERE id = $1", assignment)


async def test_who_may_call_and_which_instance_service(
        client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    _, target = await instance_service(db, plugin.space_id)
    await assign(db, target, plugin, None)
    await until_status(client, manage(plugin.space_id, target), plugin.owner, 200)
    assert up.seen[-1]["X-Plugin-Key"] == f"secret-{plugin.slug}"  # no assignment credentials: the installation's
    assert (await client.get(manage(plugin.space_id, target), headers=plugin.member)).status == 403
    # Another space's instance service, asked for through this space: not there.
    other = await make_plugin(db, make, url)
    _, foreign = await instance_service(db, other.space_id)
    await assign(db, foreign, other, None)
    await until_status(client, manage(other.space_id, foreign), other.owner, 200)
    assert (await client.get(manage(plugin.space_id, foreign), headers=plugin.owner)).status == 404
    assert (await client.get(manage(other.space_id, foreign), headers=plugin.owner)).status == 403
    # An instance service without an assignment, and garbage ids.
    _, bare = await instance_service(db, plugin.space_id)
    assert (await client.get(manage(plugin.space_id, bare), headers=plugin.owner)).status == 404
    response = await client.get(URL(f"/spaces/{plugin.space_id}/instance-services/nope/manage/x", encoded=True),
                                headers=plugin.owner)
    assert response.status == 404
    response = await client.get(manage(plugin.space_id, target, "/..;/admin"), headers=plugin.owner)
    assert response.status == 400


async def test_a_credential_neither_has_is_a_502_naming_no_secret(
        client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    _, target = await instance_service(db, plugin.space_id)
    await assign(db, target, plugin, {"token": "wrong-kind-of-secret"})  # api_key auth needs api_key
    response = await until_status(client, manage(plugin.space_id, target), plugin.owner, 502)
    body = await response.text()
    assert "wrong-kind-of-secret" not in body and response.content_type == "application/problem+json"
    assert not [s for s in up.seen if s["path"] == "/status"]
