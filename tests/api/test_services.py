"""Services: create, read, list, change, delete, status workflow, maintainers."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.api.helpers import service_body
from tests.conftest import gateway_client, make_settings
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


async def test_base_url_cannot_go_while_relative_routes_use_it(client: TestClient, make: Factory) -> None:
    vendor = make.auth(await make.user())
    service = await (await client.post("/api/v1/services", json=service_body(), headers=vendor)).json()
    route = await client.post(f"/api/v1/services/{service['id']}/routes", headers=vendor,
                              json={"route_path": "/r", "method": "GET", "target_url": "/r"})
    assert route.status == 201
    refused = await client.patch(f"/api/v1/services/{service['id']}", json={"api_base_url": None}, headers=vendor)
    assert refused.status == 422
    assert (await refused.json())["errors"][0]["field"] == "api_base_url"
    still = await (await client.get(f"/api/v1/services/{service['id']}", headers=vendor)).json()
    assert still["api_base_url"] == service["api_base_url"]


async def test_strangers_get_403_before_any_url_check(database_url: str, make: Factory) -> None:
    async with gateway_client(make_settings(database_url, allow_private_upstreams=False)) as client:
        vendor = make.auth(await make.user())
        service = await (await client.post("/api/v1/services", json=service_body(), headers=vendor)).json()
        await client.put(f"/api/v1/services/{service['id']}/status", json={"status": "approved"},
                         headers=await make.admin())
        stranger = make.auth(await make.user())
        response = await client.patch(f"/api/v1/services/{service['id']}", headers=stranger,
                                      json={"api_base_url": "http://169.254.169.254/latest"})
        assert response.status == 403  # not 422: the URL is judged only for those who may change it
        own = await client.patch(f"/api/v1/services/{service['id']}", headers=vendor,
                                 json={"api_base_url": "http://169.254.169.254/latest"})
        assert own.status == 422
