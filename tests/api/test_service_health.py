"""GET /api/v1/services/{id}/health and the installations' health fields (contract revision 3,
"Plugin health"): counts for maintainers and platform admins, never another space's ids."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from tests.factories import Factory


async def test_maintainers_see_counts_and_nobody_sees_ids(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    vendor, stranger = await make.user(), await make.user()
    check = {"path": "/health", "interval_seconds": 30}
    created = await client.post("/api/v1/services", headers=make.auth(vendor), json={
        "name": "Health", "slug": f"health-{uuid.uuid4().hex[:8]}", "version": "1", "provider": "p",
        "capabilities": {"health_check": check}})
    assert created.status == 201, await created.text()
    service = await created.json()
    url = f"/api/v1/services/{service['id']}/health"
    # Pending: a stranger may not even learn it exists.
    assert (await client.get(url, headers=make.auth(stranger))).status == 404
    await db.execute("UPDATE service_registry SET status = 'approved' WHERE id = $1", uuid.UUID(service["id"]))
    spaces = [await make.space() for _ in range(4)]
    for space, verdict in zip(spaces, ["healthy", "healthy", "unhealthy", None]):
        await db.execute("INSERT INTO service_installations (service_id, space_id, health_status) VALUES ($1, $2, $3)",
                         uuid.UUID(service["id"]), space, verdict)
    response = await client.get(url, headers=make.auth(vendor))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["installations"] == {"healthy": 2, "unhealthy": 1, "unknown": 1}
    assert body["health_check"] == check and body["open_breakers"] == 0
    text = orjson.dumps(body).decode()
    assert not any(str(space) in text for space in spaces)
    assert (await client.get(url, headers=make.auth(stranger))).status == 403
    assert (await client.get(url, headers=await make.admin())).status == 200
    assert (await client.get(f"/api/v1/services/{uuid.uuid4()}/health", headers=make.auth(vendor))).status == 404


async def test_an_installation_shows_its_health_and_breaker(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    owner = await make.user()
    space = await make.space()
    await make.member(space, "owner", owner)
    other_space = await make.space()
    service = await db.fetchval("INSERT INTO service_registry (name, slug, version, provider, status) "
                                "VALUES ('S', $1, '1', 'p', 'approved') RETURNING id", f"s-{uuid.uuid4().hex[:8]}")
    mine = await db.fetchval("INSERT INTO service_installations (service_id, space_id, health_status, "
                             "last_health_check) VALUES ($1, $2, 'unhealthy', now()) RETURNING id", service, space)
    theirs = await db.fetchval("INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2) RETURNING id",
                               service, other_space)
    read = await client.get(f"/api/v1/spaces/{space}/installations/{mine}", headers=make.auth(owner))
    body = await read.json()
    assert read.status == 200 and body["health_status"] == "unhealthy" and body["last_health_check"]
    assert body["breaker_open"] is False
    # Another space's installation, through this space's path: not there.
    assert (await client.get(f"/api/v1/spaces/{space}/installations/{theirs}", headers=make.auth(owner))).status == 404
    assert (await client.get(f"/api/v1/spaces/{other_space}/installations/{theirs}",
                             headers=make.auth(owner))).status == 403
