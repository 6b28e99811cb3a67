"""Helpers shared by the API test modules: request bodies, arranging through the API, problem checks."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.factories import Factory

API = "/api/v1"
Headers = dict[str, str]

SECRET_PASSWORD = "hunter2-" + uuid.uuid4().hex

# The status changes an admin makes to bring a freshly registered (pending) service to a status.
STATUS_STEPS: dict[str, list[str]] = {
    "approved": ["approved"], "rejected": ["rejected"], "deprecated": ["approved", "deprecated"],
}


def service_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for registering a service, with `overrides` applied."""
    body: dict[str, Any] = {
        "name": "Reports", "slug": f"reports-{uuid.uuid4().hex[:8]}", "version": "1.0.0",
        "provider": "Acme", "category": "business-intelligence",
        "api_base_url": "https://plugins.example.com/v1", "api_auth_type": "api_key",
        "api_auth_config": {"header_name": "X-Acme-Key"},
    }
    body.update(overrides)
    return body


async def register_service(client: TestClient, make: Factory, *, status: str | None = "approved",
                           **overrides: Any) -> tuple[dict[str, Any], Headers]:
    """A service registered by a fresh vendor (its maintainer) and moved to `status` (None: pending)."""
    vendor = make.auth(await make.user())
    created = await client.post(f"{API}/services", json=service_body(**overrides), headers=vendor)
    assert created.status == 201, await created.text()
    service: dict[str, Any] = await created.json()
    steps = STATUS_STEPS.get(status or "pending", [])
    admin = await make.admin() if steps else {}
    for step in steps:
        changed = await client.put(f"{API}/services/{service['id']}/status", json={"status": step}, headers=admin)
        assert changed.status == 200, await changed.text()
        service = await changed.json()
    return service, vendor


def route_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for creating a route, with `overrides` applied."""
    body: dict[str, Any] = {
        "route_path": "/reports/{id}", "method": "GET",
        "target_url": "https://plugins.example.com/v1/reports/{id}",
    }
    body.update(overrides)
    return body


async def assert_problem(response: ClientResponse, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert a problem+json answer with `status` (naming `field` if given) and return its body."""
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = await response.json()
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    return problem


async def space_with(make: Factory, role: str = "owner") -> tuple[UUID, Headers, UUID]:
    """A new space, the headers of a fresh member with `role` in it, and that member's id."""
    space = await make.space()
    user = await make.member(space, role)
    return space, make.auth(user), user


async def install(client: TestClient, space: UUID, headers: Headers, **body: Any) -> ClientResponse:
    """POST an installation with `body` into `space` through the API; the response, unchecked."""
    return await client.post(f"{API}/spaces/{space}/installations", json=body, headers=headers)


async def listed_installations(client: TestClient, space: UUID, headers: Headers) -> list[dict[str, Any]]:
    """The installations of `space` as the API lists them to `headers`."""
    response = await client.get(f"{API}/spaces/{space}/installations", headers=headers)
    assert response.status == 200, await response.text()
    items: list[dict[str, Any]] = (await response.json())["items"]
    return items


def instance_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for creating an infrastructure instance, with `overrides` applied."""
    body: dict[str, Any] = {
        "name": "build-01", "type": "vm", "host": "10.0.0.12", "port": 22,
        "connection_type": "ssh",
        "connection_config": {"username": "deploy", "secrets": {"password": SECRET_PASSWORD}},
        "status": "online", "os_type": "linux", "os_version": "Debian 12",
        "resources": {"cpu": 4, "memory": "8GiB"}, "tags": ["ci", "eu-west"],
    }
    body.update(overrides)
    return body


async def new_instance(client: TestClient, space: UUID, headers: Headers, **overrides: Any) -> dict[str, Any]:
    """An instance created in `space` through the API."""
    response = await client.post(f"{API}/spaces/{space}/instances", json=instance_body(**overrides),
                                 headers=headers)
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def instance_in_space(client: TestClient, make: Factory) -> tuple[UUID, Headers, str]:
    """A space, its owner's headers, and the services URL of a fresh instance in it."""
    space, owner, _ = await space_with(make)
    instance = await new_instance(client, space, owner)
    return space, owner, f"{API}/spaces/{space}/instances/{instance['id']}/services"


def instance_service_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for creating a service on an instance, with `overrides` applied."""
    body: dict[str, Any] = {
        "name": "nginx", "type": "docker_container", "status": "running",
        "service_config": {"image": "nginx:1.27"}, "management_config": {"restart": "always"},
        "endpoints": [{"port": 80, "protocol": "http"}], "health_check_url": "http://10.0.0.12/healthz",
    }
    body.update(overrides)
    return body


async def new_instance_service(client: TestClient, url: str, headers: Headers, **overrides: Any) -> dict[str, Any]:
    """A service created at an instance's services `url` through the API."""
    response = await client.post(url, json=instance_service_body(**overrides), headers=headers)
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result
