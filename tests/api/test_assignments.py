"""Management plugin assignments: round trip, encrypted credentials, management_plugin_id, rules."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db.encryption import associated_data
from gateway.appkeys import KEYRING
from tests.api.helpers import instance_in_space, new_instance_service, register_service
from tests.factories import Factory

CLIENT_SECRET = "cs-" + uuid.uuid4().hex


async def approved_plugin(client: TestClient, make: Factory, name: str = "Docker Manager") -> dict[str, Any]:
    """A management plugin: a service registered by a vendor and approved by a platform admin, via the API."""
    plugin, _ = await register_service(client, make, name=name, category="service-management")
    return plugin


async def setup(client: TestClient, make: Factory, db: asyncpg.Pool) -> tuple[UUID, dict[str, str], str, str]:
    """A space with an instance service; returns the space, owner headers, services URL and
    the service's assignments URL."""
    space, owner, services_url = await instance_in_space(client, make)
    service = await new_instance_service(client, services_url, owner)
    return space, owner, services_url, f"/api/v1/spaces/{space}/instance-services/{service['id']}/assignments"


async def management_plugin(db: asyncpg.Pool, assignments_url: str) -> UUID | None:
    service_id = UUID(assignments_url.split("/")[-2])
    plugin: UUID | None = await db.fetchval("SELECT management_plugin_id FROM instance_services WHERE id = $1",
                                            service_id)
    return plugin


async def assignment_rows(db: asyncpg.Pool, assignments_url: str) -> list[dict[str, Any]]:
    service_id = UUID(assignments_url.split("/")[-2])
    rows = await db.fetch("SELECT *, credentials::text AS credentials_text FROM service_management_assignments "
                          "WHERE instance_service_id = $1 ORDER BY assigned_at, id", service_id)
    return [dict(r) for r in rows]


async def assign(client: TestClient, url: str, headers: dict[str, str], plugin: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
    response = await client.post(url, json={"plugin_id": plugin["id"], **extra}, headers=headers)
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_round_trip(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, services_url, url = await setup(client, make, db)
    plugin = await approved_plugin(client, make)
    await make.installation(plugin["id"], space)

    body = {"plugin_id": plugin["id"], "config": {"mode": "full"},
            "credentials": {"client_id": "abc", "client_secret": CLIENT_SECRET}, "is_active": True}
    response = await client.post(url, json=body, headers=owner)
    assert response.status == 201, await response.text()
    assert CLIENT_SECRET not in await response.text()
    created = await response.json()
    assert response.headers["Location"] == f"{url}/{plugin['id']}"
    assert created["credential_keys"] == ["client_id", "client_secret"] and "credentials" not in created
    assert created["plugin_id"] == plugin["id"] and created["config"] == {"mode": "full"}
    assert created["is_active"] is True and created["assigned_at"]
    assert created["assigned_by"] == str(await db.fetchval(
        "SELECT user_id FROM space_members WHERE space_id = $1 AND role = 'owner'", space))

    [row] = await assignment_rows(db, url)
    assert CLIENT_SECRET not in row["credentials_text"]
    aad = associated_data("service_management_assignments", row["id"], "credentials")
    assert client.server.app[KEYRING].open(row["credentials"], aad)["client_secret"] == CLIENT_SECRET
    assert await management_plugin(db, url) == UUID(plugin["id"])

    listed = await client.get(url, headers=owner)
    assert CLIENT_SECRET not in await listed.text()
    assert await listed.json() == {"items": [created], "next_cursor": None}

    managed = await (await client.get(f"{services_url}?managed=true", headers=owner)).json()
    assert [(i["plugin_name"], i["plugin_slug"]) for i in managed["items"]] == [(plugin["name"], plugin["slug"])]

    assert (await client.delete(f"{url}/{plugin['id']}", headers=owner)).status == 204
    assert await assignment_rows(db, url) == []
    assert await management_plugin(db, url) is None
    assert (await (await client.get(f"{services_url}?managed=true", headers=owner)).json())["items"] == []
    assert (await client.delete(f"{url}/{plugin['id']}", headers=owner)).status == 404


async def test_management_plugin_follows_most_recent_active(client: TestClient, make: Factory,
                                                            db: asyncpg.Pool) -> None:
    space, owner, _, url = await setup(client, make, db)
    first, second, inactive = [await approved_plugin(client, make, f"Manager {i}") for i in range(3)]
    for plugin in (first, second, inactive):
        await make.installation(plugin["id"], space)

    await assign(client, url, owner, first)
    assert await management_plugin(db, url) == UUID(first["id"])
    await assign(client, url, owner, second)
    assert await management_plugin(db, url) == UUID(second["id"])
    await assign(client, url, owner, inactive, is_active=False)  # newest, but not active
    assert await management_plugin(db, url) == UUID(second["id"])

    assert (await client.delete(f"{url}/{second['id']}", headers=owner)).status == 204
    assert await management_plugin(db, url) == UUID(first["id"])
    assert (await client.delete(f"{url}/{first['id']}", headers=owner)).status == 204
    assert await management_plugin(db, url) is None  # only the inactive one is left
    assert [r["plugin_id"] for r in await assignment_rows(db, url)] == [UUID(inactive["id"])]

    page = await (await client.get(f"{url}?limit=1", headers=owner)).json()
    assert len(page["items"]) == 1 and page["next_cursor"] is None


async def test_plugin_must_be_installed_in_the_space(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _, url = await setup(client, make, db)
    elsewhere, inactive, uninstalled, deleted, control = [await approved_plugin(client, make) for _ in range(5)]
    await make.installation(elsewhere["id"], await make.space())
    await make.installation(inactive["id"], space, status="inactive")
    installation = await make.installation(uninstalled["id"], space)
    await db.execute("UPDATE service_installations SET deleted_at = NOW() WHERE id = $1", installation)
    await make.installation(deleted["id"], space)
    await db.execute("UPDATE service_registry SET deleted_at = NOW() WHERE id = $1", UUID(deleted["id"]))
    await make.installation(control["id"], space)

    for plugin_id in (elsewhere["id"], inactive["id"], uninstalled["id"], deleted["id"], str(uuid.uuid4())):
        response = await client.post(url, json={"plugin_id": plugin_id}, headers=owner)
        assert response.status == 422, plugin_id
        assert [e["field"] for e in (await response.json())["errors"]] == ["plugin_id"]
    assert await assignment_rows(db, url) == []
    assert await management_plugin(db, url) is None
    await assign(client, url, owner, control)  # installed and active: accepted


async def test_duplicate_assignment(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _, url = await setup(client, make, db)
    plugin = await approved_plugin(client, make)
    await make.installation(plugin["id"], space)
    await assign(client, url, owner, plugin, config={"v": 1})
    before = await assignment_rows(db, url)
    response = await client.post(url, json={"plugin_id": plugin["id"], "config": {"v": 2}}, headers=owner)
    assert response.status == 409
    assert await assignment_rows(db, url) == before


async def test_authorization_and_scope(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space_a, owner_a, _, url_a = await setup(client, make, db)
    space_b, owner_b, _, _ = await setup(client, make, db)
    plugin = await approved_plugin(client, make)
    await make.installation(plugin["id"], space_a)
    await make.installation(plugin["id"], space_b)

    viewer = make.auth(await make.member(space_a, "viewer"))
    assert (await client.get(url_a, headers=viewer)).status == 200
    assert (await client.post(url_a, json={"plugin_id": plugin["id"]}, headers=viewer)).status == 403
    assert (await client.get(url_a, headers=make.auth(await make.member(space_b, "member")))).status == 403

    # A's instance service under B's path: not found, even though the plugin is installed in B.
    foreign = url_a.replace(str(space_a), str(space_b))
    assert (await client.get(foreign, headers=owner_b)).status == 404
    assert (await client.post(foreign, json={"plugin_id": plugin["id"]}, headers=owner_b)).status == 404
    assert await assignment_rows(db, url_a) == []

    await assign(client, url_a, await make.admin(), plugin)  # platform admins may
    assert (await client.delete(f"{url_a}/{plugin['id']}", headers=viewer)).status == 403
    assert (await client.delete(f"{foreign}/{plugin['id']}", headers=owner_b)).status == 404
    assert len(await assignment_rows(db, url_a)) == 1


@pytest.mark.parametrize(("change", "field"), [
    ({"config": {"token": "x"}}, "config"),
    ({"credentials": {"client_secret": 42}}, "credentials.client_secret"),
    ({"plugin_id": "not-a-uuid"}, "plugin_id"),
    ({"is_active": "yes"}, "is_active"),
    ({"colour": "blue"}, "colour"),
    ({"credentials": {"client_secret": "a\x00b"}}, "credentials.client_secret"),
])
async def test_bad_input_changes_nothing(client: TestClient, make: Factory, db: asyncpg.Pool,
                                         change: dict[str, Any], field: str) -> None:
    space, owner, _, url = await setup(client, make, db)
    plugin = await approved_plugin(client, make)
    await make.installation(plugin["id"], space)
    response = await client.post(url, json={"plugin_id": plugin["id"], **change}, headers=owner)
    assert response.status == 422
    assert field in [e["field"] for e in (await response.json())["errors"]]
    assert await assignment_rows(db, url) == []
    assert await management_plugin(db, url) is None
