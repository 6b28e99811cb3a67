"""Services: create, read, list, change, delete, status workflow, maintainers."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.api.helpers import service_body
from tests.factories import Factory


async def test_create_read_and_approve(client: TestClient, make: Factory) -> None:
    vendor = make.auth(await make.user())
    created = await client.post("/api/v1/services", json=service_body(), headers=vendor)
    assert created.status == 201, await created.text()
    service = await created.json()
    assert created.headers["Location"] == f"/api/v1/services/{service['id']}"
    assert service["status"] == "pending" and service["installation_count"] == 0

    stranger = make.auth(await make.user())
    assert (await client.get(f"/api/v1/services/{service['id']}", headers=stranger)).status == 404
    assert (await client.get(f"/api/v1/services/{service['id']}", headers=vendor)).status == 200

    admin = await make.admin()
    approved = await client.put(f"/api/v1/services/{service['id']}/status",
                                json={"status": "approved", "reason": "looks fine"}, headers=admin)
    assert approved.status == 200
    assert (await approved.json())["status_reason"] == "looks fine"
    assert (await client.get(f"/api/v1/services/{service['id']}", headers=stranger)).status == 200

    again = await client.put(f"/api/v1/services/{service['id']}/status",
                             json={"status": "rejected"}, headers=admin)
    assert again.status == 409
    assert again.headers["Content-Type"] == "application/problem+json"
