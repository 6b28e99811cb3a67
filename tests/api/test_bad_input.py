"""A catalogue of bad requests across the API: each gets a problem+json answer with the
contract's status, names the field where there is one, and leaves the database as it was."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient


from tests.conftest import gateway_client
from tests.factories import Factory

FINGERPRINT_TABLES = ["service_registry", "service_installations", "service_api_routes", "service_ui_components",
                      "service_maintainers", "api_keys", "infrastructure_instances", "instance_services",
                      "service_management_assignments", "users", "spaces", "space_members"]


async def fingerprint(db: asyncpg.Pool) -> dict[str, str | None]:
    """Every row of every table, hashed: any write at all changes it."""
    return {t: await db.fetchval(f"SELECT md5(COALESCE(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")
            for t in FINGERPRINT_TABLES}


@dataclass
class World:
    admin: dict[str, str]  # space owner
    vendor: dict[str, str]
    service: str
    space: uuid.UUID
    installation: str
    instance: str


@pytest.fixture(scope="module")
async def world(make: Factory, settings: Any) -> World:
    client = gateway_client(settings)
    await client.start_server()
    vendor = make.auth(await make.user())
    service = await (await client.post("/api/v1/services", headers=vendor, json={
        "name": "Bad input", "slug": "bad-input", "version": "1", "provider": "p",
        "api_base_url": "https://example.com"})).json()
    await client.put(f"/api/v1/services/{service['id']}/status", json={"status": "approved"}, headers=await make.admin())
    space = await make.space()
    owner = make.auth(await make.member(space, "owner"))
    installation = await (await client.post(f"/api/v1/spaces/{space}/installations", headers=owner,
                                             json={"service_id": service["id"]})).json()
    instance = await (await client.post(f"/api/v1/spaces/{space}/instances", headers=owner,
                                        json={"name": "vm", "type": "vm", "host": "10.0.0.1"})).json()
    await client.close()
    return World(owner, vendor, service["id"], space, installation["id"], instance["id"])


def service_body(**changes: Any) -> dict[str, Any]:
    return {"name": "n", "slug": f"s-{uuid.uuid4().hex[:6]}", "version": "1", "provider": "p", **changes}


def route_body(**changes: Any) -> dict[str, Any]:
    return {"route_path": "/r", "method": "GET", "target_url": "https://example.com/r", **changes}


# (id, who, method, path template, body, expected status, field named in errors or None)
CASES: list[tuple[str, str, str, str, Any, int, str | None]] = [
    ("malformed-json", "vendor", "POST", "/services", b"{\"name\": ", 400, "body"),
    ("not-json-content-type", "vendor", "POST", "/services", ("text/plain", b"name=x"), 415, None),
    ("json-array-not-object", "vendor", "POST", "/services", [1, 2], 422, "body"),
    ("empty-body", "vendor", "POST", "/services", None, 422, "body"),
    ("unknown-field", "vendor", "POST", "/services", service_body(owner="me"), 422, "owner"),
    ("wrong-type-name", "vendor", "POST", "/services", service_body(name=5), 422, "name"),
    ("string-for-bool", "vendor", "POST", "/services", service_body(webhook_supported="yes"), 422, "webhook_supported"),
    ("missing-required", "vendor", "POST", "/services", {"name": "n"}, 422, "slug"),
    ("bad-slug", "vendor", "POST", "/services", service_body(slug="Bad_Slug"), 422, "slug"),
    ("bad-enum-auth-type", "vendor", "POST", "/services", service_body(api_auth_type="kerberos"), 422, "api_auth_type"),
    ("bad-enum-ui-type", "vendor", "POST", "/services", service_body(ui_type="flash"), 422, "ui_type"),
    ("bad-category", "vendor", "POST", "/services", service_body(category="Big Data!"), 422, "category"),
    ("non-http-url", "vendor", "POST", "/services", service_body(api_base_url="ftp://example.com"), 422, "api_base_url"),
    ("javascript-url", "vendor", "POST", "/services", service_body(icon_url="javascript:alert(1)"), 422, "icon_url"),
    ("url-with-credentials", "vendor", "POST", "/services", service_body(support_url="https://u:p@example.com"), 422, "support_url"),
    ("over-long-name", "vendor", "POST", "/services", service_body(name="x" * 256), 422, "name"),
    ("over-long-version", "vendor", "POST", "/services", service_body(version="1" * 51), 422, "version"),
    ("nul-byte", "vendor", "POST", "/services", service_body(description="a\u0000b"), 422, "description"),
    ("nul-byte-in-json-key", "vendor", "POST", "/services", service_body(capabilities={"a\u0000": 1}), 422, "capabilities.a\u0000"),
    ("secret-in-config", "vendor", "POST", "/services", service_body(api_auth_config={"client_secret": "x"}), 422, "api_auth_config"),
    ("secret-nested-config", "vendor", "POST", "/services", service_body(ui_config={"a": {"password": "x"}}), 422, "ui_config"),
    ("ten-megabyte-body", "vendor", "POST", "/services", ("application/json", b"[" + b"1," * 5_000_000 + b"1]"), 413, None),
    ("duplicate-slug", "vendor", "POST", "/services", service_body(slug="bad-input"), 409, None),
    ("slug-change", "vendor", "PATCH", "/services/{service}", {"slug": "other"}, 422, "slug"),
    ("null-required", "vendor", "PATCH", "/services/{service}", {"name": None}, 422, "name"),
    ("non-uuid-path-id", "vendor", "GET", "/services/not-a-uuid", None, 404, None),
    ("unknown-id", "vendor", "GET", "/services/" + str(uuid.UUID(int=1)), None, 404, None),
    ("status-transition", "platform_admin", "PUT", "/services/{service}/status", {"status": "rejected"}, 409, None),
    ("bad-status-enum", "platform_admin", "PUT", "/services/{service}/status", {"status": "deleted"}, 422, "status"),
    ("negative-rate-limit", "vendor", "POST", "/services/{service}/routes", route_body(rate_limit=-1, rate_limit_window=60), 422, "rate_limit"),
    ("zero-window", "vendor", "POST", "/services/{service}/routes", route_body(rate_limit=10, rate_limit_window=0), 422, "rate_limit_window"),
    ("float-for-int", "vendor", "POST", "/services/{service}/routes", route_body(cache_enabled=True, cache_ttl=1.5), 422, "cache_ttl"),
    ("bad-method", "vendor", "POST", "/services/{service}/routes", route_body(method="FETCH"), 422, "method"),
    ("placeholder-in-host", "vendor", "POST", "/services/{service}/routes",
     route_body(route_path="/r/{id}", target_url="https://{id}.example.com/r"), 422, "target_url"),
    ("bad-route-template", "vendor", "POST", "/services/{service}/routes", route_body(route_path="no-slash"), 422, "route_path"),
    ("bad-install-status", "admin", "POST", "/spaces/{space}/installations", {"service_id": "{service}", "status": "on"}, 422, "status"),
    ("install-twice", "admin", "POST", "/spaces/{space}/installations", {"service_id": "{service}"}, 409, None),
    ("credentials-not-strings", "admin", "PATCH", "/spaces/{space}/installations/{installation}", {"credentials": {"api_key": 1}}, 422, "credentials.api_key"),
    ("bad-min-role", "admin", "PATCH", "/spaces/{space}/installations/{installation}", {"permissions": {"min_role": "god"}}, 422, "permissions.min_role"),
    ("bad-api-key-role", "admin", "POST", "/spaces/{space}/api-keys", {"name": "k", "role": "superuser"}, 422, "role"),
    ("port-out-of-range", "admin", "POST", "/spaces/{space}/instances", {"name": "vm", "type": "vm", "host": "h", "port": 70000}, 422, "port"),
    ("bad-instance-type", "admin", "POST", "/spaces/{space}/instances", {"name": "vm", "type": "mainframe", "host": "h"}, 422, "type"),
    ("secret-in-management-config", "admin", "POST", "/spaces/{space}/instances/{instance}/services",
     {"name": "db", "type": "application", "management_config": {"kubeconfig": "..."}}, 422, "management_config"),
    ("bad-cursor", "vendor", "GET", "/services?cursor=bm90LWEtY3Vyc29y", None, 422, "cursor"),
    ("bad-limit", "vendor", "GET", "/services?limit=0", None, 422, "limit"),
    ("cursor-year-0", "vendor", "GET", "/services?cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd", None, 422, "cursor"),
    ("cursor-year-10000", "vendor", "GET", "/services?cursor=WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTAxOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd", None, 422, "cursor"),
    ("cursor-no-offset", "vendor", "GET", "/services?cursor=WyIyMDIwLTAxLTAxVDAwOjAwOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd", None, 422, "cursor"),
    ("cursor-id-not-string", "vendor", "GET", "/services?cursor=WyIyMDIwLTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgNV0", None, 422, "cursor"),
    ("cursor-object", "vendor", "GET", "/services?cursor=eyJhIjogMSwgImIiOiAyfQ", None, 422, "cursor"),
    ("cursor-nested-json", "vendor", "GET", "/services?cursor=W1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1s", None, 422, "cursor"),
    ("cursor-not-ascii", "vendor", "GET", "/services?cursor=%C3%A9t%C3%A9", None, 422, "cursor"),
    ("cursor-on-space-list", "admin", "GET", "/spaces/{space}/instances?cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd", None, 422, "cursor"),
    # Nesting past what the API takes (64 levels) is refused before any parser or Python's
    # recursion limit decides: at 1000 levels orjson still parses, at 10,000 it gives up itself.
    ("nested-65-arrays", "vendor", "POST", "/services", ("application/json", b"[" * 65 + b"]" * 65), 400, "body"),
    ("nested-1000-arrays", "vendor", "POST", "/services", ("application/json", b"[" * 1000 + b"]" * 1000), 400, "body"),
    ("nested-10000-arrays", "vendor", "POST", "/services", ("application/json", b"[" * 10000 + b"]" * 10000), 400, "body"),
    ("nested-1000-objects-in-a-field", "vendor", "POST", "/services",
     ("application/json", b'{"capabilities": ' + b'{"a": ' * 1000 + b'1' + b'}' * 1001), 400, "body"),
    ("nested-list-body", "admin", "PUT", "/spaces/{space}/instances/{instance}/services",
     ("application/json", b"[" * 1000 + b"]" * 1000), 400, "body"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_bad_input(case: tuple[str, str, str, str, Any, int, str | None], client: TestClient,
                         world: World, make: Factory, db: asyncpg.Pool) -> None:
    _, who, method, template, body, status, field = case
    headers = {"vendor": world.vendor, "admin": world.admin}.get(who) or await make.admin()
    ids = {"service": world.service, "space": str(world.space), "installation": world.installation,
           "instance": world.instance}
    path = "/api/v1" + template.format(**ids)
    kwargs: dict[str, Any] = {}
    if isinstance(body, tuple):
        kwargs["data"], headers = io.BytesIO(body[1]), {**headers, "Content-Type": body[0]}
    elif isinstance(body, bytes):
        kwargs["data"], headers = body, {**headers, "Content-Type": "application/json"}
    elif body is not None:
        kwargs["json"] = {k: (v.format(**ids) if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()} \
            if isinstance(body, dict) else body

    before = await fingerprint(db)
    response = await client.request(method, path, headers=headers, **kwargs)
    problem = await response.json(content_type=None)
    assert response.status == status, problem
    assert response.headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == status and problem["request_id"] == response.headers["X-Request-ID"]
    assert {"type", "title", "detail"} <= problem.keys()
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    assert "Traceback" not in str(problem) and "asyncpg" not in str(problem)
    assert await fingerprint(db) == before
