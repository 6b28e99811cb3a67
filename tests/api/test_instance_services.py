"""Services on an instance: round trips, ordering, discovery sync, the managed filter, bad input."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import instance_in_space, instance_service_body, new_instance_service
from tests.factories import Factory


async def service_rows(db: asyncpg.Pool, url: str) -> list[dict[str, Any]]:
    instance_id = UUID(url.split("/")[-2])
    rows = await db.fetch("SELECT * FROM instance_services WHERE instance_id = $1 ORDER BY name, type", instance_id)
    return [dict(r) for r in rows]


async def test_round_trip(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    _, owner, url = await instance_in_space(client, make)
    response = await client.post(url, json=instance_service_body(), headers=owner)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert response.headers["Location"] == f"{url}/{created['id']}"
    assert created["endpoints"] == [{"port": 80, "protocol": "http"}]
    assert created["management_plugin_id"] is None and created["discovered_at"] and created["last_seen"]

    listed = await (await client.get(url, headers=owner)).json()
    assert listed == {"items": [created], "next_cursor": None}
    assert "plugin_name" not in listed["items"][0]

    response = await client.patch(f"{url}/{created['id']}", json={"status": "error", "health_check_url": None},
                                  headers=owner)
    assert response.status == 200, await response.text()
    patched = await response.json()
    assert (patched["status"], patched["health_check_url"], patched["name"]) == ("error", None, "nginx")

    assert (await client.delete(f"{url}/{created['id']}", headers=owner)).status == 204
    assert await service_rows(db, url) == []  # a real delete
    assert (await client.delete(f"{url}/{created['id']}", headers=owner)).status == 404
    assert (await client.patch(f"{url}/{created['id']}", json={"status": "error"}, headers=owner)).status == 404


async def test_unique_name_and_type(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    _, owner, url = await instance_in_space(client, make)
    first = await new_instance_service(client, url, owner)
    await new_instance_service(client, url, owner, type="systemd_service")  # same name, other type: another service
    before = await service_rows(db, url)
    assert (await client.post(url, json=instance_service_body(status="stopped"), headers=owner)).status == 409
    response = await client.patch(f"{url}/{first['id']}", json={"type": "systemd_service"}, headers=owner)
    assert response.status == 409
    assert await service_rows(db, url) == before


async def test_newest_discovered_first_with_cursor(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    _, owner, url = await instance_in_space(client, make)
    made = [await new_instance_service(client, url, owner, name=f"svc-{i}") for i in range(4)]
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    # svc-1 newest, then svc-3, then svc-0 and svc-2 discovered at the same moment (the id decides).
    for index, hours in ((0, 1), (1, 9), (2, 1), (3, 5)):
        await db.execute("UPDATE instance_services SET discovered_at = $2 WHERE id = $1",
                         UUID(made[index]["id"]), base + timedelta(hours=hours))
    tied = sorted((made[0]["id"], made[2]["id"]), key=UUID, reverse=True)
    expected = [made[1]["id"], made[3]["id"], *tied]

    seen: list[str] = []
    cursor = ""
    while True:
        page = await (await client.get(f"{url}?limit=1{cursor}", headers=owner)).json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == expected
    everything = await (await client.get(url, headers=owner)).json()
    assert [item["id"] for item in everything["items"]] == expected


async def test_discovery_sync(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    _, owner, url = await instance_in_space(client, make)
    kept = await new_instance_service(client, url, owner, name="postgres", type="systemd_service", status="running")
    gone = await new_instance_service(client, url, owner, name="redis", status="running")
    old = datetime(2024, 6, 1, tzinfo=timezone.utc)
    await db.execute("UPDATE instance_services SET last_seen = $1, discovered_at = $1 WHERE instance_id = $2",
                     old, UUID(url.split("/")[-2]))

    response = await client.put(url, headers=owner, json=[
        {"name": "postgres", "type": "systemd_service", "status": "error", "endpoints": [{"port": 5432}]},
        {"name": "grafana", "type": "docker_container", "status": "running"},
    ])
    assert response.status == 200, await response.text()
    synced = await response.json()
    assert synced["next_cursor"] is None
    # grafana was discovered now, the other two at the same moment long ago (the id decides).
    tied = sorted([(UUID(kept["id"]), "postgres"), (UUID(gone["id"]), "redis")], reverse=True)
    assert [s["name"] for s in synced["items"]] == ["grafana", *(name for _, name in tied)]

    rows = {r["name"]: r for r in await service_rows(db, url)}
    assert set(rows) == {"postgres", "redis", "grafana"}
    assert rows["postgres"]["id"] == UUID(kept["id"])  # updated in place, not replaced
    assert rows["postgres"]["status"] == "error" and rows["postgres"]["endpoints"] == [{"port": 5432}]
    assert rows["postgres"]["service_config"] == {"image": "nginx:1.27"}  # not reported: left as it was
    assert rows["postgres"]["last_seen"] > old and rows["postgres"]["discovered_at"] == old
    assert rows["redis"]["status"] == "stopped" and rows["redis"]["last_seen"] == old
    assert rows["grafana"]["status"] == "running" and rows["grafana"]["discovered_at"] > old
    listed = await (await client.get(url, headers=owner)).json()
    assert listed["items"] == synced["items"]

    # An empty report stops everything and removes nothing.
    response = await client.put(url, json=[], headers=owner)
    assert response.status == 200
    assert {s["status"] for s in (await response.json())["items"]} == {"stopped"}
    assert len(await service_rows(db, url)) == 3


@pytest.mark.parametrize(("body", "field"), [
    ([instance_service_body(), instance_service_body(status="stopped")], "1.name"),
    ([instance_service_body(), instance_service_body(type="bogus")], "1.type"),
    ([instance_service_body(management_plugin_id="3f1e0e8e-8f5e-4a3e-9a57-0a4a8f0d6b11")], "0.management_plugin_id"),
    ({"name": "nginx", "type": "docker_container"}, "body"),
])
async def test_sync_refuses_bad_arrays(client: TestClient, make: Factory, db: asyncpg.Pool,
                                       body: Any, field: str) -> None:
    _, owner, url = await instance_in_space(client, make)
    await new_instance_service(client, url, owner, name="keep-me")
    before = await service_rows(db, url)
    response = await client.put(url, json=body, headers=owner)
    assert response.status == 422
    assert field in [e["field"] for e in (await response.json())["errors"]]
    assert await service_rows(db, url) == before


async def test_managed_filter(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    _, owner, url = await instance_in_space(client, make)
    managed = await new_instance_service(client, url, owner, name="managed")
    await new_instance_service(client, url, owner, name="unmanaged")
    plugin = await db.fetchrow(
        "INSERT INTO service_registry (name, slug, version, provider) "
        "VALUES ('Docker Manager', 'docker-manager-filter', '1.0', 'Acme') RETURNING id, name, slug")
    # Arranged directly: the assignments API (tested in test_assignments.py) is what sets it in use.
    await db.execute("UPDATE instance_services SET management_plugin_id = $1 WHERE id = $2",
                     plugin["id"], UUID(managed["id"]))

    page = await (await client.get(f"{url}?managed=true", headers=owner)).json()
    assert [(i["id"], i["plugin_name"], i["plugin_slug"]) for i in page["items"]] == [
        (managed["id"], "Docker Manager", "docker-manager-filter")]
    assert page["items"][0]["management_plugin_id"] == str(plugin["id"])
    everything = await (await client.get(f"{url}?managed=false", headers=owner)).json()
    assert len(everything["items"]) == 2 and all("plugin_name" not in i for i in everything["items"])


async def test_scoping_and_authorization(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space_a, owner_a, url_a = await instance_in_space(client, make)
    space_b, owner_b, url_b = await instance_in_space(client, make)
    service = await new_instance_service(client, url_a, owner_a)
    instance_a = url_a.split("/")[-2]

    viewer = make.auth(await make.member(space_a, "viewer"))
    assert (await client.get(url_a, headers=viewer)).status == 200
    assert (await client.post(url_a, json=instance_service_body(name="x"), headers=viewer)).status == 403
    assert (await client.put(url_a, json=[], headers=viewer)).status == 403
    assert (await client.patch(f"{url_a}/{service['id']}", json={"status": "error"}, headers=viewer)).status == 403
    assert (await client.delete(f"{url_a}/{service['id']}", headers=viewer)).status == 403
    assert (await client.get(url_a, headers=make.auth(await make.member(space_b, "member")))).status == 403

    # A's instance under B's path, and A's service under B's instance: not found.
    foreign = f"/api/v1/spaces/{space_b}/instances/{instance_a}/services"
    assert (await client.get(foreign, headers=owner_b)).status == 404
    assert (await client.post(foreign, json=instance_service_body(name="x"), headers=owner_b)).status == 404
    assert (await client.put(foreign, json=[], headers=owner_b)).status == 404
    assert (await client.patch(f"{foreign}/{service['id']}", json={"status": "error"}, headers=owner_b)).status == 404
    assert (await client.patch(f"{url_b}/{service['id']}", json={"status": "error"}, headers=owner_b)).status == 404
    assert (await client.delete(f"{url_b}/{service['id']}", headers=owner_b)).status == 404

    admin = await make.admin()
    response = await client.patch(f"{url_a}/{service['id']}", json={"status": "stopped"}, headers=admin)
    assert response.status == 200
    assert [(r["name"], r["status"]) for r in await service_rows(db, url_a)] == [("nginx", "stopped")]

    # Services of a deleted instance go with it.
    assert (await client.delete(f"/api/v1/spaces/{space_a}/instances/{instance_a}", headers=owner_a)).status == 204
    assert (await client.get(url_a, headers=owner_a)).status == 404


BAD_BODIES = [
    ("unknown field", {"colour": "blue"}, "colour"),
    ("management_plugin_id is not writable", {"management_plugin_id": None}, "management_plugin_id"),
    ("bad type", {"type": "vm"}, "type"),
    ("bad status", {"status": "sleeping"}, "status"),
    ("wrong type", {"endpoints": {"port": 80}}, "endpoints"),
    ("non-http health_check_url", {"health_check_url": "ftp://10.0.0.12/health"}, "health_check_url"),
    ("relative health_check_url", {"health_check_url": "/healthz"}, "health_check_url"),
    ("secret in management_config", {"management_config": {"password": "x"}}, "management_config"),
    ("secret in service_config", {"service_config": {"env": {"api_key": "x"}}}, "service_config"),
    ("over-long name", {"name": "n" * 256}, "name"),
    ("NUL byte", {"service_config": {"cmd": "a\x00b"}}, "service_config.cmd"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_changes_nothing(client: TestClient, make: Factory, db: asyncpg.Pool,
                                         case: str, change: dict[str, Any], field: str) -> None:
    _, owner, url = await instance_in_space(client, make)
    service = await new_instance_service(client, url, owner)
    before = await service_rows(db, url)
    for method, target in (("POST", url), ("PATCH", f"{url}/{service['id']}")):
        body = instance_service_body(**{"name": "other", **change}) if method == "POST" else change
        response = await client.request(method, target, json=body, headers=owner)
        assert response.status == 422, (case, method)
        assert field in [e["field"] for e in (await response.json())["errors"]]
    response = await client.put(url, json=[instance_service_body(**change)], headers=owner)
    assert response.status == 422
    assert await service_rows(db, url) == before
