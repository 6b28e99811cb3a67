"""UI components: a service's own, and what a space's installations show to whom."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import assert_problem, register_service
from tests.factories import Factory


def component_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "component_type": "widget", "component_name": "Revenue", "component_id": "revenue-widget",
        "render_type": "iframe", "render_config": {"url": "https://plugins.example.com/ui/revenue"},
        "placement": "dashboard", "placement_config": {"width": 2},
    }
    body.update(overrides)
    return body


def components_url(service: dict[str, Any]) -> str:
    return f"/api/v1/services/{service['id']}/ui-components"


async def component_rows(db: asyncpg.Pool, service: dict[str, Any]) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM service_ui_components WHERE service_id = $1 ORDER BY id",
                          UUID(service["id"]))
    return [dict(r) for r in rows]


async def test_round_trip(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    created = await client.post(components_url(service), json=component_body(required_permissions=["admin"]),
                                headers=vendor)
    assert created.status == 201, await created.text()
    component = await created.json()
    assert created.headers["Location"] == f"{components_url(service)}/{component['id']}"
    assert component["installation_id"] is None and component["required_permissions"] == ["admin"]

    stranger = make.auth(await make.user())
    read = await client.get(f"{components_url(service)}/{component['id']}", headers=stranger)
    assert read.status == 200 and await read.json() == component
    listed = await client.get(components_url(service), headers=stranger)
    assert await listed.json() == {"items": [component], "next_cursor": None}

    patched = await client.patch(f"{components_url(service)}/{component['id']}", headers=vendor,
                                 json={"placement": "settings", "required_permissions": None})
    assert patched.status == 200, await patched.text()
    changed = await patched.json()
    assert changed["placement"] == "settings" and changed["required_permissions"] is None
    assert changed["component_name"] == "Revenue"

    assert (await client.delete(f"{components_url(service)}/{component['id']}", headers=vendor)).status == 204
    assert await component_rows(db, service) == []  # a real delete
    await assert_problem(await client.get(f"{components_url(service)}/{component['id']}", headers=vendor), 404)


async def test_who_may_read_and_write(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    component = await (await client.post(components_url(service), json=component_body(), headers=vendor)).json()
    item = f"{components_url(service)}/{component['id']}"
    before = await component_rows(db, service)

    other = make.auth(await make.user())
    await assert_problem(await client.post(components_url(service), json=component_body(), headers=other), 403)
    await assert_problem(await client.patch(item, json={"placement": "sidebar"}, headers=other), 403)
    await assert_problem(await client.delete(item, headers=other), 403)
    assert await component_rows(db, service) == before

    admin = await make.admin()
    assert (await client.patch(item, json={"placement": "sidebar"}, headers=admin)).status == 200

    pending, pending_vendor = await register_service(client, make, status="pending")
    hidden = await (await client.post(components_url(pending), json=component_body(),
                                      headers=pending_vendor)).json()
    await assert_problem(await client.get(components_url(pending), headers=other), 404)
    await assert_problem(await client.get(f"{components_url(pending)}/{hidden['id']}", headers=other), 404)
    await assert_problem(await client.post(components_url(pending), json=component_body(), headers=other), 404)
    assert (await client.get(components_url(pending), headers=pending_vendor)).status == 200

    # Another service's component id, and unknown ids.
    for url in (f"{components_url(pending)}/{component['id']}", f"{components_url(service)}/{uuid.uuid4()}",
                f"{components_url(service)}/not-a-uuid"):
        await assert_problem(await client.get(url, headers=admin), 404)
    await assert_problem(await client.get(components_url(service)), 401)


@pytest.mark.parametrize(("change", "field"), [
    ({"surprise": True}, "surprise"),
    ({"component_type": "banner"}, "component_type"),
    ({"render_type": "flash"}, "render_type"),
    ({"placement": "footer"}, "placement"),
    ({"component_name": ""}, "component_name"),
    ({"component_name": "x" * 256}, "component_name"),
    ({"component_id": "x" * 256}, "component_id"),
    ({"component_name": 7}, "component_name"),
    ({"render_config": {"auth": {"client_secret": "s"}}}, "render_config"),
    ({"placement_config": "wide"}, "placement_config"),
    ({"required_permissions": ["superuser"]}, "required_permissions.0"),
    ({"required_permissions": ["admin", "admin"]}, "required_permissions"),
    ({"required_permissions": "admin"}, "required_permissions"),
    ({"placement": None}, "placement"),
])
async def test_bad_input_is_refused(client: TestClient, make: Factory, db: asyncpg.Pool,
                                    change: dict[str, Any], field: str) -> None:
    service, vendor = await register_service(client, make)
    await assert_problem(await client.post(components_url(service), json=component_body(**change), headers=vendor),
                         422, field)
    assert await component_rows(db, service) == []

    component = await (await client.post(components_url(service), json=component_body(), headers=vendor)).json()
    before = await component_rows(db, service)
    await assert_problem(await client.patch(f"{components_url(service)}/{component['id']}", json=change,
                                            headers=vendor), 422, field)
    assert await component_rows(db, service) == before


async def test_service_list_pagination(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)

    async def add(n: int) -> str:
        created = await client.post(components_url(service), json=component_body(component_name=f"c{n}"),
                                    headers=vendor)
        assert created.status == 201
        return str((await created.json())["id"])

    expected = [await add(n) for n in range(3)]
    first = await (await client.get(components_url(service), params={"limit": "2"}, headers=vendor)).json()
    expected += [await add(3), await add(4)]
    seen = [item["id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await (await client.get(components_url(service), params={"limit": "2", "cursor": cursor},
                                       headers=vendor)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert seen == expected


async def add_component(client: TestClient, service: dict[str, Any], vendor: dict[str, str],
                        **overrides: Any) -> str:
    created = await client.post(components_url(service), json=component_body(**overrides), headers=vendor)
    assert created.status == 201, await created.text()
    return str((await created.json())["id"])


async def insert_installation_component(db: asyncpg.Pool, service: dict[str, Any], installation: UUID,
                                        name: str) -> str:
    # No API writes installation components yet; the table allows them and the space list shows them.
    component_id = await db.fetchval(
        "INSERT INTO service_ui_components (service_id, installation_id, component_type, component_name,"
        " render_type, placement) VALUES ($1, $2, 'widget', $3, 'iframe', 'dashboard') RETURNING id",
        UUID(service["id"]), installation, name)
    return str(component_id)


async def test_space_components(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, other_space = await make.space(), await make.space()
    owner = await make.member(space, "owner")
    admin, member = await make.member(space, "admin"), await make.member(space, "member")
    outsider = await make.member(other_space, "owner")

    shown, vendor = await register_service(client, make)
    installation = await make.installation(shown["id"], space, owner)
    other_installation = await make.installation(shown["id"], other_space, outsider)
    ids = {
        "dash": await add_component(client, shown, vendor),
        "side": await add_component(client, shown, vendor, placement="sidebar", required_permissions=[]),
        "admins": await add_component(client, shown, vendor, required_permissions=["admin"]),
        "platform": await add_component(client, shown, vendor, placement="settings",
                                        required_permissions=["platform_admin", "viewer"]),
        "own": await insert_installation_component(db, shown, installation, "own"),
    }
    await insert_installation_component(db, shown, other_installation, "not ours")

    # Components that must not show: an uninstalled plugin, a deleted service, an inactive
    # installation, and a service that is not installed at all.
    uninstalled, uninstalled_vendor = await register_service(client, make)
    await add_component(client, uninstalled, uninstalled_vendor)
    gone = await make.installation(uninstalled["id"], space, owner)
    await db.execute("UPDATE service_installations SET deleted_at = NOW() WHERE id = $1", gone)
    deleted, deleted_vendor = await register_service(client, make)
    await add_component(client, deleted, deleted_vendor)
    await make.installation(deleted["id"], space, owner)
    assert (await client.delete(f"/api/v1/services/{deleted['id']}", headers=deleted_vendor)).status == 204
    inactive, inactive_vendor = await register_service(client, make)
    await add_component(client, inactive, inactive_vendor)
    await db.execute("UPDATE service_installations SET status = 'inactive' WHERE id = $1",
                     await make.installation(inactive["id"], space, owner))
    elsewhere, elsewhere_vendor = await register_service(client, make)
    await add_component(client, elsewhere, elsewhere_vendor)

    url = f"/api/v1/spaces/{space}/ui-components"

    async def listed(user: dict[str, str], **params: str) -> list[str]:
        response = await client.get(url, params=params, headers=user)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["next_cursor"] is None
        return sorted(item["id"] for item in body["items"])

    def names(*keys: str) -> list[str]:
        return sorted(ids[k] for k in keys)

    viewer = await make.member(space, "viewer")
    assert await listed(make.auth(member)) == names("dash", "side", "own")
    assert await listed(make.auth(admin)) == names("dash", "side", "admins", "own")
    # Permissions are held literally: an owner does not hold "admin".
    assert await listed(make.auth(owner)) == names("dash", "side", "own")
    assert await listed(make.auth(viewer)) == names("dash", "side", "platform", "own")
    assert await listed(make.auth(await make.user(), admin=True)) == names("dash", "side", "platform", "own")
    # A platform admin who is also a member holds their role too.
    assert await listed(make.auth(admin, admin=True)) == names("dash", "side", "admins", "platform", "own")

    assert await listed(make.auth(admin), placement="sidebar") == names("side")
    assert await listed(make.auth(admin), placement="dashboard") == names("dash", "admins", "own")
    await assert_problem(await client.get(url, params={"placement": "footer"}, headers=make.auth(admin)),
                         422, "placement")

    await assert_problem(await client.get(url, headers=make.auth(outsider)), 403)
    await assert_problem(await client.get(url, headers=make.auth(await make.user())), 403)
    await assert_problem(await client.get(url), 401)

    # Keyset pages cover every row once.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get(url, params=query, headers=make.auth(admin))).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == names("dash", "side", "admins", "own") and len(seen) == len(set(seen))
