"""Service-wide routes: round trips, who may read and write them, and what input is refused."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.api.helpers import assert_problem, register_service, route_body
from tests.conftest import make_settings
from tests.factories import Factory


async def route_rows(db: asyncpg.Pool, service_id: str | UUID) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM service_api_routes WHERE service_id = $1 ORDER BY id",
                          UUID(str(service_id)))
    return [dict(r) for r in rows]


def routes_url(service: dict[str, Any]) -> str:
    return f"/api/v1/services/{service['id']}/routes"


async def test_round_trip(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    body = route_body(auth_type="oauth2", auth_config={"token_url": "https://auth.example.com/token"},
                      rate_limit=10, rate_limit_window=60, cache_enabled=True, cache_ttl=30,
                      options={"timeout": 12.5, "connect_timeout": 2, "max_body_bytes": 0,
                               "cache_scope": "space"})
    created = await client.post(routes_url(service), json=body, headers=vendor)
    assert created.status == 201, await created.text()
    route = await created.json()
    assert created.headers["Location"] == f"{routes_url(service)}/{route['id']}"
    assert route["service_id"] == service["id"] and route["installation_id"] is None
    assert route["auth_config"] == {"token_url": "https://auth.example.com/token"}
    assert route["options"] == {"timeout": 12.5, "connect_timeout": 2, "max_body_bytes": 0,
                                "cache_scope": "space"}

    read = await client.get(f"{routes_url(service)}/{route['id']}", headers=vendor)
    assert read.status == 200 and await read.json() == route
    listed = await client.get(routes_url(service), headers=vendor)
    assert await listed.json() == {"items": [route], "next_cursor": None}

    patched = await client.patch(f"{routes_url(service)}/{route['id']}", headers=vendor,
                                 json={"method": "*", "options": {"timeout": 5}})
    assert patched.status == 200, await patched.text()
    changed = await patched.json()
    assert changed["method"] == "*" and changed["options"] == {"timeout": 5}
    assert changed["rate_limit"] == 10 and changed["route_path"] == "/reports/{id}"
    [stored] = await route_rows(db, service["id"])
    assert stored["method"] == "*" and stored["options"] == {"timeout": 5}

    deleted = await client.delete(f"{routes_url(service)}/{route['id']}", headers=vendor)
    assert deleted.status == 204
    assert await route_rows(db, service["id"]) == []
    await assert_problem(await client.get(f"{routes_url(service)}/{route['id']}", headers=vendor), 404)
    await assert_problem(await client.delete(f"{routes_url(service)}/{route['id']}", headers=vendor), 404)


async def test_defaults_and_relative_target(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)
    created = await client.post(routes_url(service), headers=vendor,
                                json={"route_path": "/", "method": "POST", "target_url": "/"})
    assert created.status == 201, await created.text()
    route = await created.json()
    assert route["cache_enabled"] is False and route["options"] == {} and route["auth_config"] == {}
    assert route["rate_limit"] is None and route["auth_type"] is None

    bare, bare_vendor = await register_service(client, make, api_base_url=None)
    refused = await client.post(routes_url(bare), json=route_body(target_url="/reports/{id}"),
                                headers=bare_vendor)
    await assert_problem(refused, 422, "target_url")


async def test_readers_see_public_routes_without_auth_config(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)
    created = await client.post(routes_url(service), headers=vendor,
                                json=route_body(auth_type="api_key", auth_config={"header_name": "X-Key"}))
    route = await created.json()

    stranger = make.auth(await make.user())
    listed = await (await client.get(routes_url(service), headers=stranger)).json()
    assert [item["id"] for item in listed["items"]] == [route["id"]]
    assert "auth_config" not in listed["items"][0]
    item = await client.get(f"{routes_url(service)}/{route['id']}", headers=stranger)
    assert item.status == 200
    seen = await item.json()
    assert "auth_config" not in seen and seen["auth_type"] == "api_key"

    for headers in (vendor, await make.admin()):
        full = await (await client.get(f"{routes_url(service)}/{route['id']}", headers=headers)).json()
        assert full["auth_config"] == {"header_name": "X-Key"}

    await assert_problem(await client.get(routes_url(service)), 401)


async def test_pending_service_routes_only_for_maintainers(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make, status="pending")
    created = await client.post(routes_url(service), json=route_body(), headers=vendor)
    assert created.status == 201, await created.text()
    route = await created.json()

    stranger = make.auth(await make.user())
    await assert_problem(await client.get(routes_url(service), headers=stranger), 404)
    await assert_problem(await client.get(f"{routes_url(service)}/{route['id']}", headers=stranger), 404)
    await assert_problem(await client.post(routes_url(service), json=route_body(method="PUT"),
                                           headers=stranger), 404)
    assert (await client.get(routes_url(service), headers=vendor)).status == 200
    assert (await client.get(routes_url(service), headers=await make.admin())).status == 200


async def test_other_vendors_cannot_write(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    route = await (await client.post(routes_url(service), json=route_body(), headers=vendor)).json()
    before = await route_rows(db, service["id"])

    other = make.auth(await make.user())
    url = f"{routes_url(service)}/{route['id']}"
    await assert_problem(await client.post(routes_url(service), json=route_body(method="PUT"), headers=other), 403)
    await assert_problem(await client.patch(url, json={"method": "PUT"}, headers=other), 403)
    await assert_problem(await client.delete(url, headers=other), 403)
    assert await route_rows(db, service["id"]) == before

    admin = await make.admin()
    patched = await client.patch(url, json={"method": "PUT"}, headers=admin)
    assert patched.status == 200 and (await patched.json())["method"] == "PUT"
    assert (await client.delete(url, headers=admin)).status == 204


async def test_unknown_foreign_and_deleted(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)
    other, other_vendor = await register_service(client, make)
    foreign = await (await client.post(routes_url(other), json=route_body(), headers=other_vendor)).json()

    for url in (f"{routes_url(service)}/{foreign['id']}", f"{routes_url(service)}/{uuid.uuid4()}",
                f"{routes_url(service)}/not-a-uuid", f"/api/v1/services/{uuid.uuid4()}/routes"):
        await assert_problem(await client.get(url, headers=vendor), 404)
    await assert_problem(await client.patch(f"{routes_url(service)}/{foreign['id']}",
                                            json={"method": "PUT"}, headers=vendor), 404)
    await assert_problem(await client.delete(f"{routes_url(service)}/{foreign['id']}", headers=vendor), 404)

    assert (await client.delete(f"/api/v1/services/{other['id']}", headers=other_vendor)).status == 204
    await assert_problem(await client.get(routes_url(other), headers=other_vendor), 404)
    await assert_problem(await client.post(routes_url(other), json=route_body(method="PUT"),
                                           headers=other_vendor), 404)


BAD_ROUTES: list[tuple[dict[str, Any], str]] = [
    ({"surprise": 1}, "surprise"),
    ({"rate_limit": "10", "rate_limit_window": 60}, "rate_limit"),
    ({"cache_enabled": "yes"}, "cache_enabled"),
    ({"method": "FETCH"}, "method"),
    ({"method": "get"}, "method"),
    ({"route_path": "reports/{id}"}, "route_path"),
    ({"route_path": "/files/{rest:path}/tail"}, "route_path"),
    ({"route_path": "/reports//{id}"}, "route_path"),
    ({"route_path": "/reports/{id}/"}, "route_path"),
    ({"route_path": "/reports/../{id}"}, "route_path"),
    ({"route_path": "/reports/{id}/{id}"}, "route_path"),
    ({"route_path": "/reports/x{id}"}, "route_path"),
    ({"route_path": "/" + "a" * 255}, "route_path"),
    ({"target_url": "https://{id}.example.com/reports"}, "target_url"),
    ({"target_url": "https://plugins.example.com:{id}/reports"}, "target_url"),
    ({"target_url": "https://plugins.example.com/reports?id={id}"}, "target_url"),
    ({"target_url": "https://plugins.example.com/reports/{other}"}, "target_url"),
    ({"target_url": "ftp://plugins.example.com/reports"}, "target_url"),
    ({"target_url": "plugins.example.com/reports"}, "target_url"),
    ({"target_url": "https://user:pw@plugins.example.com/reports"}, "target_url"),
    ({"target_url": "//plugins.example.com/reports"}, "target_url"),
    ({"rate_limit": -1, "rate_limit_window": 60}, "rate_limit"),
    ({"rate_limit": 10}, "rate_limit_window"),
    ({"rate_limit_window": 60}, "rate_limit"),
    ({"cache_enabled": True}, "cache_ttl"),
    ({"cache_enabled": True, "cache_ttl": 0}, "cache_ttl"),
    ({"auth_type": "digest"}, "auth_type"),
    ({"auth_config": {"token": "s3cret"}}, "auth_config"),
    ({"auth_config": {"token_url": "ftp://auth.example.com/"}}, "auth_config"),
    ({"options": {"timeout": 0}}, "options.timeout"),
    ({"options": {"timeout": 3601}}, "options.timeout"),
    ({"options": {"connect_timeout": 301}}, "options.connect_timeout"),
    ({"options": {"max_body_bytes": -1}}, "options.max_body_bytes"),
    ({"options": {"cache_scope": "global"}}, "options.cache_scope"),
    ({"options": {"retries": 3}}, "options.retries"),
    ({"target_url": None}, "target_url"),
]


@pytest.mark.parametrize(("change", "field"), BAD_ROUTES)
async def test_bad_input_is_refused(client: TestClient, make: Factory, db: asyncpg.Pool,
                                    change: dict[str, Any], field: str) -> None:
    service, vendor = await register_service(client, make)
    response = await client.post(routes_url(service), json=route_body(**change), headers=vendor)
    await assert_problem(response, 422, field)
    assert await route_rows(db, service["id"]) == []


async def test_missing_fields_and_malformed_json(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    problem = await assert_problem(await client.post(routes_url(service), json={}, headers=vendor), 422)
    assert {e["field"] for e in problem["errors"]} == {"route_path", "method", "target_url"}
    await assert_problem(await client.post(routes_url(service), data=b"{", headers={
        **vendor, "Content-Type": "application/json"}), 400)
    assert await route_rows(db, service["id"]) == []


async def test_duplicates_conflict(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    assert (await client.post(routes_url(service), json=route_body(), headers=vendor)).status == 201
    before = await route_rows(db, service["id"])
    await assert_problem(await client.post(routes_url(service), json=route_body(), headers=vendor), 409)
    assert await route_rows(db, service["id"]) == before

    # Another method, or the same route on another service, is a different route.
    put = await client.post(routes_url(service), json=route_body(method="PUT"), headers=vendor)
    assert put.status == 201
    other, other_vendor = await register_service(client, make)
    assert (await client.post(routes_url(other), json=route_body(), headers=other_vendor)).status == 201

    # A PATCH onto an existing (route_path, method) conflicts too, and changes nothing.
    before = await route_rows(db, service["id"])
    clash = await client.patch(f"{routes_url(service)}/{(await put.json())['id']}", json={"method": "GET"},
                               headers=vendor)
    await assert_problem(clash, 409)
    assert await route_rows(db, service["id"]) == before


PATCHES: list[tuple[dict[str, Any], str]] = [
    ({"rate_limit_window": None}, "rate_limit_window"),
    ({"rate_limit": None}, "rate_limit"),
    ({"cache_ttl": None}, "cache_ttl"),
    ({"route_path": "/reports"}, "target_url"),
    ({"target_url": "https://plugins.example.com/{name}"}, "target_url"),
    ({"route_path": None}, "route_path"),
    ({"method": None}, "method"),
    ({"cache_enabled": None}, "cache_enabled"),
    ({"options": {"timeout": -1}}, "options.timeout"),
    ({"target_url": "/{id}"}, "target_url"),  # the service has no api_base_url
]


@pytest.mark.parametrize(("change", "field"), PATCHES)
async def test_patch_is_checked_on_the_merged_row(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                  change: dict[str, Any], field: str) -> None:
    service, vendor = await register_service(client, make, api_base_url=None)
    created = await client.post(routes_url(service), headers=vendor, json=route_body(
        rate_limit=10, rate_limit_window=60, cache_enabled=True, cache_ttl=30))
    assert created.status == 201, await created.text()
    before = await route_rows(db, service["id"])
    response = await client.patch(f"{routes_url(service)}/{(await created.json())['id']}", json=change,
                                  headers=vendor)
    await assert_problem(response, 422, field)
    assert await route_rows(db, service["id"]) == before


async def test_patch_clearing_both_rate_fields_is_fine(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)
    route = await (await client.post(routes_url(service), headers=vendor, json=route_body(
        rate_limit=10, rate_limit_window=60))).json()
    patched = await client.patch(f"{routes_url(service)}/{route['id']}", headers=vendor,
                                 json={"rate_limit": None, "rate_limit_window": None,
                                       "route_path": "/r/{id}/{rest:path}",
                                       "target_url": "https://plugins.example.com/{id}/{rest}"})
    assert patched.status == 200, await patched.text()
    assert (await patched.json())["rate_limit"] is None


async def test_pagination_is_stable_while_rows_are_added(client: TestClient, make: Factory,
                                                         db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)

    async def add(n: int) -> str:
        created = await client.post(routes_url(service), json=route_body(route_path=f"/r{n}/{{id}}"),
                                    headers=vendor)
        assert created.status == 201
        return str((await created.json())["id"])

    expected = [await add(n) for n in range(5)]
    # A route of an installation belongs to the installation, not to the service-wide list.
    space = await make.space()
    installation = await db.fetchval(
        "INSERT INTO service_installations (service_id, space_id, installed_by) VALUES ($1, $2, $3) RETURNING id",
        UUID(service["id"]), space, await make.user())
    await db.execute("INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url)"
                     " VALUES ($1, $2, '/r0/{id}', 'GET', '/x')", UUID(service["id"]), installation)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get(routes_url(service), params=query, headers=vendor)).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if len(seen) == 2:  # rows added between pages show up on a later page
            expected += [await add(5), await add(6)]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected

    bad = await client.get(routes_url(service), params={"cursor": "garbage!"}, headers=vendor)
    await assert_problem(bad, 422, "cursor")


async def test_private_upstreams_are_refused(aiohttp_client: Any, client: TestClient, make: Factory,
                                             db: asyncpg.Pool, database_url: str) -> None:
    service, vendor = await register_service(client, make)  # registered where private upstreams are allowed
    strict = await aiohttp_client(create_app(make_settings(database_url, allow_private_upstreams=False)))
    private: list[tuple[dict[str, Any], str]] = [
        ({"target_url": "http://127.0.0.1/reports/{id}"}, "target_url"),
        ({"target_url": "http://169.254.169.254/latest/{id}"}, "target_url"),
        ({"target_url": "http://[::ffff:10.0.0.1]/{id}"}, "target_url"),
        ({"target_url": "https://93.184.216.34/{id}",  # IP literals only: no DNS in this test
          "auth_config": {"token_url": "http://10.1.2.3/token"}}, "auth_config.token_url"),
    ]
    for change, field in private:
        response = await strict.post(routes_url(service), json=route_body(**change), headers=vendor)
        await assert_problem(response, 422, field)
    assert await route_rows(db, service["id"]) == []

    public = await strict.post(routes_url(service), json=route_body(target_url="https://93.184.216.34/{id}"),
                               headers=vendor)
    assert public.status == 201, await public.text()
    route = await public.json()
    refused = await strict.patch(f"{routes_url(service)}/{route['id']}", headers=vendor,
                                 json={"target_url": "http://192.168.1.1/{id}"})
    await assert_problem(refused, 422, "target_url")
    assert [r["target_url"] for r in await route_rows(db, service["id"])] == ["https://93.184.216.34/{id}"]


async def test_rest_parameters_and_relative_targets(client: TestClient, make: Factory) -> None:
    service, vendor = await register_service(client, make)
    for target in ("https://plugins.example.com/files/{rest}", "/files/{rest:path}?v=2"):
        created = await client.post(routes_url(service), headers=vendor, json=route_body(
            route_path="/files/{rest:path}", target_url=target, method="*" if "?" in target else "GET"))
        assert created.status == 201, await created.text()
