"""Routes of one installation: managed by the space's owners and admins, scoped to the space."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.api.helpers import Headers, assert_problem, register_service, route_body
from tests.factories import Factory
from tests.plugins import until_status


@dataclass
class Tenant:
    space: UUID
    installation: UUID
    owner: Headers
    admin: Headers
    member: Headers
    viewer: Headers

    @property
    def routes(self) -> str:
        return f"/api/v1/spaces/{self.space}/installations/{self.installation}/routes"


async def tenant(make: Factory, service: dict[str, Any]) -> Tenant:
    space = await make.space()
    owner = await make.member(space, "owner")
    headers = {role: make.auth(await make.member(space, role)) for role in ("admin", "member", "viewer")}
    # Straight into the table: the installations API is written elsewhere.
    return Tenant(space, await make.installation(service["id"], space, owner), make.auth(owner), **headers)


async def installation_rows(db: asyncpg.Pool, installation: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM service_api_routes WHERE installation_id = $1 ORDER BY id", installation)
    return [dict(r) for r in rows]


@pytest.fixture
async def world(client: TestClient, make: Factory) -> dict[str, Any]:
    service, vendor = await register_service(client, make)
    return {"service": service, "vendor": vendor, "a": await tenant(make, service),
            "b": await tenant(make, service)}


async def test_round_trip(client: TestClient, world: dict[str, Any], db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    service = world["service"]
    # A service-wide route on the same path and method: the installation's may override it.
    assert (await client.post(f"/api/v1/services/{service['id']}/routes", json=route_body(),
                              headers=world["vendor"])).status == 201

    created = await client.post(a.routes, headers=a.admin, json=route_body(
        auth_type="bearer", rate_limit=5, rate_limit_window=1, target_url="/reports/{id}"))
    assert created.status == 201, await created.text()
    route = await created.json()
    assert created.headers["Location"] == f"{a.routes}/{route['id']}"
    assert route["service_id"] == service["id"] and route["installation_id"] == str(a.installation)
    assert route["auth_config"] == {}

    read = await client.get(f"{a.routes}/{route['id']}", headers=a.owner)
    assert read.status == 200 and await read.json() == route
    listed = await client.get(a.routes, headers=a.admin)
    assert await listed.json() == {"items": [route], "next_cursor": None}  # not the service-wide one

    patched = await client.patch(f"{a.routes}/{route['id']}", json={"cache_enabled": True, "cache_ttl": 9},
                                 headers=a.owner)
    assert patched.status == 200, await patched.text()
    assert (await patched.json())["cache_ttl"] == 9
    [stored] = await installation_rows(db, a.installation)
    assert stored["cache_enabled"] is True and stored["rate_limit"] == 5

    assert (await client.delete(f"{a.routes}/{route['id']}", headers=a.admin)).status == 204
    assert await installation_rows(db, a.installation) == []
    await assert_problem(await client.get(f"{a.routes}/{route['id']}", headers=a.admin), 404)


async def test_platform_admins_manage_any_space(client: TestClient, make: Factory, world: dict[str, Any]) -> None:
    a: Tenant = world["a"]
    admin = await make.admin()
    created = await client.post(a.routes, json=route_body(), headers=admin)
    assert created.status == 201, await created.text()
    assert (await client.get(a.routes, headers=admin)).status == 200
    assert (await client.delete(f"{a.routes}/{(await created.json())['id']}", headers=admin)).status == 204


async def test_members_viewers_and_strangers_are_refused(client: TestClient, world: dict[str, Any],
                                                         db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    b: Tenant = world["b"]
    route = await (await client.post(a.routes, json=route_body(), headers=a.admin)).json()
    item = f"{a.routes}/{route['id']}"
    before = await installation_rows(db, a.installation)

    # Members and viewers of the space, its service's maintainer, and another space's admin.
    for headers in (a.member, a.viewer, world["vendor"], b.admin, b.member):
        await assert_problem(await client.get(a.routes, headers=headers), 403)
        await assert_problem(await client.get(item, headers=headers), 403)
        await assert_problem(await client.post(a.routes, json=route_body(method="PUT"), headers=headers), 403)
        await assert_problem(await client.patch(item, json={"method": "PUT"}, headers=headers), 403)
        await assert_problem(await client.delete(item, headers=headers), 403)
    assert await installation_rows(db, a.installation) == before
    await assert_problem(await client.get(a.routes), 401)


async def test_ids_from_another_space_are_not_found(client: TestClient, world: dict[str, Any],
                                                    db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    b: Tenant = world["b"]
    b_route = await (await client.post(b.routes, json=route_body(), headers=b.admin)).json()

    # B's installation under A's space path.
    crossed = f"/api/v1/spaces/{a.space}/installations/{b.installation}/routes"
    await assert_problem(await client.get(crossed, headers=a.admin), 404)
    await assert_problem(await client.post(crossed, json=route_body(method="PUT"), headers=a.admin), 404)
    # B's route under A's installation.
    await assert_problem(await client.get(f"{a.routes}/{b_route['id']}", headers=a.admin), 404)
    await assert_problem(await client.patch(f"{a.routes}/{b_route['id']}", json={"method": "PUT"},
                                            headers=a.admin), 404)
    await assert_problem(await client.delete(f"{a.routes}/{b_route['id']}", headers=a.admin), 404)
    assert [r["method"] for r in await installation_rows(db, b.installation)] == ["GET"]

    for url in (f"/api/v1/spaces/{a.space}/installations/{uuid.uuid4()}/routes",
                f"/api/v1/spaces/{a.space}/installations/nope/routes", f"{a.routes}/{uuid.uuid4()}"):
        await assert_problem(await client.get(url, headers=a.admin), 404)


async def test_uninstalled_or_deleted_service_is_not_found(client: TestClient, make: Factory,
                                                          db: asyncpg.Pool) -> None:
    service, vendor = await register_service(client, make)
    a = await tenant(make, service)
    await db.execute("UPDATE service_installations SET deleted_at = NOW() WHERE id = $1", a.installation)
    await assert_problem(await client.get(a.routes, headers=a.admin), 404)
    await assert_problem(await client.post(a.routes, json=route_body(), headers=a.admin), 404)

    other, other_vendor = await register_service(client, make)
    b = await tenant(make, other)
    assert (await client.delete(f"/api/v1/services/{other['id']}", headers=other_vendor)).status == 204
    await assert_problem(await client.get(b.routes, headers=b.admin), 404)


@pytest.mark.parametrize(("change", "field"), [
    ({"target_url": "https://plugins.example.com/{nope}"}, "target_url"),
    ({"target_url": "https://{id}.example.com/"}, "target_url"),
    ({"route_path": "/a/{rest:path}/b"}, "route_path"),
    ({"method": "BREW"}, "method"),
    ({"rate_limit": 10}, "rate_limit_window"),
    ({"rate_limit": 0, "rate_limit_window": 1}, "rate_limit"),
    ({"cache_enabled": True}, "cache_ttl"),
    ({"options": {"timeout": "5"}}, "options.timeout"),
    ({"installation_id": str(uuid.uuid4())}, "installation_id"),
])
async def test_bad_input_is_refused(client: TestClient, world: dict[str, Any], db: asyncpg.Pool,
                                    change: dict[str, Any], field: str) -> None:
    a: Tenant = world["a"]
    await assert_problem(await client.post(a.routes, json=route_body(**change), headers=a.admin), 422, field)
    assert await installation_rows(db, a.installation) == []


async def test_relative_target_needs_an_api_base_url(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make, api_base_url=None)
    a = await tenant(make, service)
    await assert_problem(await client.post(a.routes, json=route_body(target_url="/r/{id}"), headers=a.admin),
                         422, "target_url")
    assert await installation_rows(db, a.installation) == []


async def test_duplicates_and_patch_rules(client: TestClient, world: dict[str, Any], db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    b: Tenant = world["b"]
    route = await (await client.post(a.routes, json=route_body(), headers=a.admin)).json()
    await assert_problem(await client.post(a.routes, json=route_body(), headers=a.admin), 409)
    # The same route in another installation is a different route.
    assert (await client.post(b.routes, json=route_body(), headers=b.admin)).status == 201

    before = await installation_rows(db, a.installation)
    item = f"{a.routes}/{route['id']}"
    await assert_problem(await client.patch(item, json={"route_path": "/reports"}, headers=a.admin),
                         422, "target_url")
    await assert_problem(await client.patch(item, json={"rate_limit": 3}, headers=a.admin),
                         422, "rate_limit_window")
    assert await installation_rows(db, a.installation) == before


async def test_pagination_is_stable_while_rows_are_added(client: TestClient, world: dict[str, Any]) -> None:
    a: Tenant = world["a"]

    async def add(n: int) -> str:
        created = await client.post(a.routes, json=route_body(route_path=f"/p{n}/{{id}}"), headers=a.admin)
        assert created.status == 201
        return str((await created.json())["id"])

    expected = [await add(n) for n in range(3)]
    first = await (await client.get(a.routes, params={"limit": "2"}, headers=a.admin)).json()
    expected.append(await add(3))
    second = await (await client.get(a.routes, params={"limit": "2", "cursor": first["next_cursor"]},
                                     headers=a.admin)).json()
    assert second["next_cursor"] is None
    assert [item["id"] for item in first["items"] + second["items"]] == expected


# -- the service's own hosts only ---------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "https://attacker.example/collect",
    "http://plugins.example.com/v1/reports/{id}",          # another scheme
    "https://plugins.example.com:8443/v1/reports/{id}",    # another port
    "https://plugins.example.com.attacker.example/{id}",
    "https://example.com/v1/reports/{id}",
])
async def test_targets_off_the_vendors_hosts_are_refused(client: TestClient, world: dict[str, Any],
                                                         db: asyncpg.Pool, target: str) -> None:
    a: Tenant = world["a"]
    await assert_problem(await client.post(a.routes, json=route_body(target_url=target), headers=a.admin),
                         422, "target_url")
    route = await (await client.post(a.routes, json=route_body(), headers=a.admin)).json()
    await assert_problem(await client.patch(f"{a.routes}/{route['id']}", json={"target_url": target},
                                            headers=a.admin), 422, "target_url")
    assert [r["target_url"] for r in await installation_rows(db, a.installation)] == [route_body()["target_url"]]


async def test_an_installation_route_has_no_token_url_of_its_own(client: TestClient, world: dict[str, Any],
                                                                 db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    own = {"token_url": "https://plugins.example.com/oauth/token"}  # even on the vendor's host
    await assert_problem(await client.post(a.routes, headers=a.admin, json=route_body(
        auth_type="oauth2", auth_config=own)), 422, "auth_config.token_url")
    route = await (await client.post(a.routes, json=route_body(auth_type="oauth2",
                                                               auth_config={"scope": "read"}),
                                     headers=a.admin)).json()
    await assert_problem(await client.patch(f"{a.routes}/{route['id']}", json={"auth_config": own},
                                            headers=a.admin), 422, "auth_config.token_url")
    [stored] = await installation_rows(db, a.installation)
    assert stored["auth_config"] == {"scope": "read"}


async def test_another_spaces_admin_is_refused_before_the_body_is_judged(client: TestClient,
                                                                         world: dict[str, Any],
                                                                         db: asyncpg.Pool) -> None:
    a: Tenant = world["a"]
    b: Tenant = world["b"]
    bad = route_body(target_url="https://attacker.example/collect", auth_config={"token_url": "https://x.example/t"})
    for headers in (b.admin, b.owner, a.member):
        await assert_problem(await client.post(a.routes, json=bad, headers=headers), 403)
        await assert_problem(await client.get(a.routes, headers=headers), 403)
    assert await installation_rows(db, a.installation) == []


class Upstream:
    """A loopback plugin server that answers every path and remembers the ones it was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text="plugin")


async def vendor_on(client: TestClient, make: Factory, aiohttp_server: Any,
                    ) -> tuple[dict[str, Any], Headers, Upstream, Upstream, str, str]:
    """A service on one loopback upstream with a service-wide route to a second one."""
    first, second = Upstream(), Upstream()
    base = f"http://127.0.0.1:{(await aiohttp_server(first.app)).port}"
    other = f"http://127.0.0.1:{(await aiohttp_server(second.app)).port}"
    service, vendor = await register_service(client, make, api_base_url=f"{base}/v1", api_auth_type="none",
                                             api_auth_config={})
    wide = await client.post(f"/api/v1/services/{service['id']}/routes", headers=vendor,
                             json=route_body(route_path="/wide", target_url=f"{other}/wide"))
    assert wide.status == 201, await wide.text()
    return service, vendor, first, second, base, other


async def test_relative_and_vendor_origin_targets_are_served(client: TestClient, make: Factory,
                                                              aiohttp_server: Any) -> None:
    service, _, first, second, base, other = await vendor_on(client, make, aiohttp_server)
    a = await tenant(make, service)
    for path, target in (("/rel", "/rel"), ("/same", f"{base}/v1/same"), ("/second", f"{other}/second"),
                         ("/cased", f"{base.replace('http', 'HTTP')}/cased")):
        created = await client.post(a.routes, json=route_body(route_path=path, target_url=target), headers=a.admin)
        assert created.status == 201, await created.text()
    # The same loopback address by another name is another host.
    await assert_problem(await client.post(a.routes, headers=a.admin, json=route_body(
        route_path="/named", target_url=base.replace("127.0.0.1", "localhost") + "/named")), 422, "target_url")

    plugin = f"/spaces/{a.space}/plugins/{service['slug']}"
    for path in ("/rel", "/same", "/second", "/cased"):
        await until_status(client, plugin + path, a.member, 200)
    assert first.paths == ["/v1/rel", "/v1/same", "/cased"] and second.paths == ["/second"]


async def test_stored_routes_off_the_vendors_hosts_are_not_served(client: TestClient, make: Factory,
                                                                  db: asyncpg.Pool, aiohttp_server: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    service, vendor, first, second, base, other = await vendor_on(client, make, aiohttp_server)
    attacker = Upstream()
    elsewhere = f"http://127.0.0.1:{(await aiohttp_server(attacker.app)).port}"
    a = await tenant(make, service)
    # Rows written straight into the table skip the API's rule, as rows written before it did.
    insert = ("INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url,"
              " auth_type, auth_config) VALUES ($1, $2, $3, 'GET', $4, $5, $6) RETURNING id")
    service_id = UUID(service["id"])
    off_host = await db.fetchval(insert, service_id, a.installation, "/collect", f"{elsewhere}/collect", None, {})
    own_token = await db.fetchval(insert, service_id, a.installation, "/token", "/token", "bearer",
                                  {"token_url": f"{elsewhere}/token"})
    on_old_base = await db.fetchval(insert, service_id, a.installation, "/old", f"{base}/v1/old", None, {})
    plugin = f"/spaces/{a.space}/plugins/{service['slug']}"
    await until_status(client, plugin + "/old", a.member, 200)  # the table has loaded this installation
    for path in ("/collect", "/token"):
        await until_status(client, plugin + path, a.member, 404)
    logged = caplog.text
    assert str(off_host) in logged and str(own_token) in logged

    # The vendor moves to its second host: a route still on the first is no longer the vendor's.
    moved = await client.patch(f"/api/v1/services/{service['id']}", json={"api_base_url": f"{other}/v2"},
                               headers=vendor)
    assert moved.status == 200, await moved.text()
    await until_status(client, plugin + "/old", a.member, 404)
    assert str(on_old_base) in caplog.text
    assert attacker.paths == [] and set(first.paths) == {"/v1/old"}  # until the reload, polled more than once
