"""Installations: install, read, list, configure, uninstall, revive; rights; installation_count."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import API, install, listed_installations, register_service, space_with
from tests.factories import Factory


async def counts(db: asyncpg.Pool, service_id: str | UUID) -> tuple[int, int]:
    """(installation_count as kept on the service, live installations actually there)."""
    service = UUID(str(service_id))
    kept = await db.fetchval("SELECT installation_count FROM service_registry WHERE id = $1", service)
    live = await db.fetchval("SELECT count(*) FROM service_installations WHERE service_id = $1"
                             " AND deleted_at IS NULL", service)
    return kept, live


async def deleted_at(db: asyncpg.Pool, installation_id: str) -> Any:
    return await db.fetchval("SELECT deleted_at FROM service_installations WHERE id = $1", UUID(installation_id))


async def test_round_trip(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    created = await install(client, space, owner, service_id=service["id"], config={"region": "eu"},
                            credentials={"client_secret": "s1", "client_id": "c1"},
                            permissions={"min_role": "member"})
    assert created.status == 201, await created.text()
    inst = await created.json()
    assert created.headers["Location"] == f"{API}/spaces/{space}/installations/{inst['id']}"
    assert inst["service_id"] == service["id"] and inst["space_id"] == str(space)
    assert inst["service_slug"] == service["slug"] and inst["service_name"] == "Reports"
    assert inst["config"] == {"region": "eu"} and inst["permissions"] == {"min_role": "member"}
    assert inst["credential_keys"] == ["client_id", "client_secret"]
    assert inst["status"] == "active" and "credentials" not in inst
    assert await counts(db, service["id"]) == (1, 1)

    one = await client.get(f"{API}/spaces/{space}/installations/{inst['id']}", headers=owner)
    assert one.status == 200 and await one.json() == inst
    listed = await client.get(f"{API}/spaces/{space}/installations", headers=owner)
    assert listed.status == 200 and await listed.json() == {"items": [inst], "next_cursor": None}

    url = f"{API}/spaces/{space}/installations/{inst['id']}"
    patched = await client.patch(url, json={"config": {"tier": "gold"}, "credentials": {"token": "t"},
                                            "status": "inactive", "permissions": {"min_role": "admin"}},
                                 headers=owner)
    assert patched.status == 200, await patched.text()
    changed = await patched.json()
    assert changed["config"] == {"tier": "gold"}  # replaced whole, not merged
    assert changed["credential_keys"] == ["token"]
    assert changed["status"] == "inactive" and changed["permissions"] == {"min_role": "admin"}
    assert changed["installed_at"] == inst["installed_at"] and changed["updated_at"] > inst["updated_at"]
    empty = await client.patch(url, json={"credentials": {}}, headers=owner)
    assert (await empty.json())["credential_keys"] == []
    assert await db.fetchval("SELECT credentials FROM service_installations WHERE id = $1", UUID(inst["id"])) == {}

    assert (await client.delete(url, headers=owner)).status == 204
    assert (await client.get(url, headers=owner)).status == 404
    assert (await client.patch(url, json={"status": "active"}, headers=owner)).status == 404
    assert (await client.delete(url, headers=owner)).status == 404
    assert await (await client.get(f"{API}/spaces/{space}/installations", headers=owner)).json() == \
        {"items": [], "next_cursor": None}
    assert await counts(db, service["id"]) == (0, 0)


async def test_by_slug_and_twice_is_409(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, admin, _ = await space_with(make, "admin")
    created = await install(client, space, admin, slug=service["slug"], config={"a": 1})
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["service_id"] == service["id"] and body["config"] == {"a": 1}
    assert body["permissions"] == {} and body["credential_keys"] == []

    for again in ({"slug": service["slug"]}, {"service_id": service["id"], "config": {"b": 2}}):
        conflict = await install(client, space, admin, **again)
        assert conflict.status == 409
        assert conflict.headers["Content-Type"] == "application/problem+json"
    config = await db.fetchval("SELECT config FROM service_installations WHERE id = $1", UUID(body["id"]))
    assert config == {"a": 1}
    assert await counts(db, service["id"]) == (1, 1)


async def test_reinstall_revives_the_row(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    first = await (await install(client, space, owner, service_id=service["id"], config={"v": 1},
                                 credentials={"old": "x"}, status="error")).json()
    # A route of this installation only: it must survive the uninstall/reinstall.
    route_id = await db.fetchval(
        "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url)"
        " VALUES ($1, $2, '/reports', 'GET', 'https://plugins.example.com/reports') RETURNING id",
        UUID(service["id"]), UUID(first["id"]))
    await db.execute("UPDATE service_installations SET health_status = 'down', last_health_check = NOW()"
                     " WHERE id = $1", UUID(first["id"]))
    url = f"{API}/spaces/{space}/installations/{first['id']}"
    assert (await client.delete(url, headers=owner)).status == 204
    assert await counts(db, service["id"]) == (0, 0)

    other_admin = make.auth(await make.member(space, "admin"))
    revived = await install(client, space, other_admin, slug=service["slug"], config={"v": 2},
                            credentials={"new": "y"})
    assert revived.status == 201, await revived.text()
    second = await revived.json()
    assert revived.headers["Location"] == url
    assert second["id"] == first["id"]
    assert second["installed_at"] > first["installed_at"]
    assert second["installed_by"] != first["installed_by"] and second["installed_by"] is not None
    assert second["config"] == {"v": 2} and second["credential_keys"] == ["new"]
    assert second["status"] == "active" and second["health_status"] is None
    assert await counts(db, service["id"]) == (1, 1)
    assert await db.fetchval("SELECT installation_id FROM service_api_routes WHERE id = $1", route_id) == \
        UUID(first["id"])
    rows = await db.fetchval("SELECT count(*) FROM service_installations WHERE space_id = $1", space)
    assert rows == 1


async def test_pagination_across_inserts(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    services = [(await register_service(client, make))[0] for _ in range(6)]
    for service in services[:5]:
        assert (await install(client, space, owner, service_id=service["id"])).status == 201

    seen: list[str] = []
    url: str | None = f"{API}/spaces/{space}/installations?limit=2"
    while url is not None:
        response = await client.get(url, headers=owner)
        assert response.status == 200
        page = await response.json()
        assert set(page) == {"items", "next_cursor"} and len(page["items"]) <= 2
        seen += [item["service_id"] for item in page["items"]]
        if len(seen) == 2:  # inserted meanwhile: sorts after the cursor, so a later page shows it
            assert (await install(client, space, owner, service_id=services[5]["id"])).status == 201
        url = None if page["next_cursor"] is None else \
            f"{API}/spaces/{space}/installations?limit=2&cursor={page['next_cursor']}"
    assert seen == [s["id"] for s in services]

    bad = await client.get(f"{API}/spaces/{space}/installations?cursor=nonsense", headers=owner)
    assert bad.status == 422


async def test_who_may_read_and_write(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space_a, owner_a, _ = await space_with(make)
    space_b, owner_b, _ = await space_with(make)
    inst_a = await (await install(client, space_a, owner_a, service_id=service["id"], config={"k": 1})).json()
    inst_b = await (await install(client, space_b, owner_b, service_id=service["id"])).json()
    url_a = f"{API}/spaces/{space_a}/installations/{inst_a['id']}"
    other, _ = await register_service(client, make)

    for role in ("viewer", "member"):
        headers = make.auth(await make.member(space_a, role))
        assert (await client.get(f"{API}/spaces/{space_a}/installations", headers=headers)).status == 200
        assert (await client.get(url_a, headers=headers)).status == 200
        assert (await install(client, space_a, headers, service_id=other["id"])).status == 403
        assert (await client.patch(url_a, json={"config": {}}, headers=headers)).status == 403
        assert (await client.delete(url_a, headers=headers)).status == 403

    # A member of space B sees nothing of A; B's installation under A's path does not exist.
    assert (await client.get(f"{API}/spaces/{space_a}/installations", headers=owner_b)).status == 403
    assert (await client.get(url_a, headers=owner_b)).status == 403
    assert (await install(client, space_a, owner_b, service_id=other["id"])).status == 403
    foreign = f"{API}/spaces/{space_a}/installations/{inst_b['id']}"
    assert (await client.get(foreign, headers=owner_a)).status == 404
    assert (await client.patch(foreign, json={"config": {"x": 1}}, headers=owner_a)).status == 404
    assert (await client.delete(foreign, headers=owner_a)).status == 404
    stranger = make.auth(await make.user())
    assert (await client.get(url_a, headers=stranger)).status == 403
    unauthenticated = await client.get(url_a)
    assert unauthenticated.status == 401 and unauthenticated.headers["WWW-Authenticate"] == "Bearer"

    config_a = await db.fetchval("SELECT config FROM service_installations WHERE id = $1", UUID(inst_a["id"]))
    assert config_a == {"k": 1}
    assert await deleted_at(db, inst_a["id"]) is None and await deleted_at(db, inst_b["id"]) is None
    assert await counts(db, other["id"]) == (0, 0)

    # A platform admin, not a member of A, may do everything.
    admin = await make.admin()
    assert (await client.get(f"{API}/spaces/{space_a}/installations", headers=admin)).status == 200
    assert (await client.patch(url_a, json={"config": {"k": 2}}, headers=admin)).status == 200
    assert (await install(client, space_a, admin, service_id=other["id"])).status == 201
    assert (await client.delete(url_a, headers=admin)).status == 204
    assert await counts(db, service["id"]) == (1, 1)
    nowhere = await install(client, uuid.uuid4(), admin, service_id=service["id"])
    assert nowhere.status == 404
    assert await counts(db, service["id"]) == (1, 1)


async def test_only_approved_services_install(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    unknown = await install(client, space, owner, service_id=str(uuid.uuid4()))
    assert unknown.status == 422
    unknown_error = (await unknown.json())["errors"]
    assert [e["field"] for e in unknown_error] == ["service_id"]

    for status in ("pending", "rejected"):
        service, _ = await register_service(client, make, status=status)
        by_id = await install(client, space, owner, service_id=service["id"])
        assert by_id.status == 422
        # Not revealed: the same answer as for a service that does not exist.
        assert (await by_id.json())["errors"] == unknown_error
        by_slug = await install(client, space, owner, slug=service["slug"])
        assert by_slug.status == 422
        assert [e["field"] for e in (await by_slug.json())["errors"]] == ["slug"]
        assert await counts(db, service["id"]) == (0, 0)

    deprecated, _ = await register_service(client, make, status="deprecated")
    refused = await install(client, space, owner, service_id=deprecated["id"])
    assert refused.status == 422 and "deprecated" in (await refused.json())["errors"][0]["message"]

    # The platform admin may see a pending service, so it is told why.
    pending, _ = await register_service(client, make, status=None)
    told = await install(client, space, await make.admin(), service_id=pending["id"])
    assert told.status == 422 and "pending" in (await told.json())["errors"][0]["message"]
    rows = await db.fetchval("SELECT count(*) FROM service_installations WHERE space_id = $1", space)
    assert rows == 0


async def test_deprecated_keeps_working_deleted_disappears(client: TestClient, make: Factory,
                                                          db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    inst = await (await install(client, space, owner, service_id=service["id"])).json()
    url = f"{API}/spaces/{space}/installations/{inst['id']}"
    admin = await make.admin()
    deprecated = await client.put(f"{API}/services/{service['id']}/status", json={"status": "deprecated"},
                                  headers=admin)
    assert deprecated.status == 200
    assert (await client.get(url, headers=owner)).status == 200
    assert (await client.patch(url, json={"config": {"still": True}}, headers=owner)).status == 200
    assert len(await listed_installations(client, space, owner)) == 1

    assert (await client.delete(f"{API}/services/{service['id']}", headers=admin)).status == 204
    assert (await client.get(url, headers=owner)).status == 404
    assert (await client.patch(url, json={"config": {}}, headers=owner)).status == 404
    assert (await client.delete(url, headers=owner)).status == 404
    assert await listed_installations(client, space, owner) == []
    assert await deleted_at(db, inst["id"]) is None  # hidden with its service, not uninstalled


async def test_concurrent_installs_across_spaces(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    admin = await make.admin()
    spaces = [await make.space() for _ in range(30)]

    first = await asyncio.gather(*(install(client, s, admin, service_id=service["id"]) for s in spaces[:20]))
    assert [r.status for r in first] == [201] * 20
    assert await counts(db, service["id"]) == (20, 20)

    ids = [(await r.json())["id"] for r in first]
    uninstalls = [client.delete(f"{API}/spaces/{s}/installations/{i}", headers=admin)
                  for s, i in zip(spaces[:10], ids[:10])]
    installs = [install(client, s, admin, service_id=service["id"]) for s in spaces[20:]]
    mixed = await asyncio.gather(*uninstalls, *installs)
    assert [r.status for r in mixed] == [204] * 10 + [201] * 10
    assert await counts(db, service["id"]) == (20, 20)

    # Reinstall (revive) in half the emptied spaces while the other new ones uninstall.
    revive = [install(client, s, admin, service_id=service["id"]) for s in spaces[:5]]
    new_ids = [(await r.json())["id"] for r in mixed[10:]]
    drop = [client.delete(f"{API}/spaces/{s}/installations/{i}", headers=admin)
            for s, i in zip(spaces[20:25], new_ids[:5])]
    last = await asyncio.gather(*revive, *drop)
    assert [r.status for r in last] == [201] * 5 + [204] * 5
    assert await counts(db, service["id"]) == (20, 20)


async def test_one_space_hammering_install_and_uninstall(client: TestClient, make: Factory,
                                                         db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    inst = await (await install(client, space, owner, service_id=service["id"])).json()
    url = f"{API}/spaces/{space}/installations/{inst['id']}"

    calls = []
    for n in range(24):
        calls.append(install(client, space, owner, service_id=service["id"]) if n % 2
                     else client.delete(url, headers=owner))
    results = await asyncio.gather(*calls)
    statuses = {r.status for r in results}
    assert statuses <= {201, 204, 404, 409}, statuses
    assert await counts(db, service["id"]) in ((0, 0), (1, 1))
    rows = await db.fetchval("SELECT count(*) FROM service_installations WHERE space_id = $1", space)
    assert rows == 1


SID = "<service id>"  # replaced by the test's approved service

BAD_BODIES = [
    pytest.param({"service_id": SID, "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"service_id": 42}, "service_id", id="wrong-type"),
    pytest.param({"service_id": "not-a-uuid"}, "service_id", id="bad-uuid"),
    pytest.param({}, "service_id", id="neither"),
    pytest.param({"config": {"a": 1}}, "service_id", id="neither-with-config"),
    pytest.param({"slug": "Not A Slug"}, "slug", id="bad-slug"),
    pytest.param({"service_id": SID, "status": "running"}, "status", id="bad-status"),
    pytest.param({"service_id": SID, "status": None}, "status", id="null-status"),
    pytest.param({"service_id": SID, "permissions": {"min_role": "god"}}, "permissions.min_role",
                 id="bad-min-role"),
    pytest.param({"service_id": SID, "permissions": {"x": 1}}, "permissions.x", id="permissions-extra"),
    pytest.param({"service_id": SID, "permissions": []}, "permissions", id="permissions-type"),
    pytest.param({"service_id": SID, "config": {"password": "x"}}, "config", id="secret-in-config"),
    pytest.param({"service_id": SID, "config": {"db": {"nested": [{"API_KEY": "x"}]}}}, "config",
                 id="nested-secret"),
    pytest.param({"service_id": SID, "config": "text"}, "config", id="config-type"),
    pytest.param({"service_id": SID, "credentials": {"api_key": 5}}, "credentials.api_key",
                 id="non-string-credential"),
    pytest.param({"service_id": SID, "credentials": {"": "x"}}, "credentials", id="empty-credential-name"),
    pytest.param({"service_id": SID, "credentials": {"k" * 101: "x"}}, "credentials", id="long-credential-name"),
    pytest.param({"service_id": SID, "credentials": {"k": "x" * 8193}}, "credentials.k", id="long-credential"),
    pytest.param({"service_id": SID, "credentials": ["x"]}, "credentials", id="credentials-type"),
    pytest.param({"service_id": SID, "config": {"note": "a\x00b"}}, "config.note", id="nul-byte"),
    pytest.param({"service_id": SID, "credentials": {"k": "a\x00b"}}, "credentials.k", id="nul-credential"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_install_bodies_change_nothing(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                 body: dict[str, Any], field: str) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    body = {k: service["id"] if v == SID else v for k, v in body.items()}
    response = await install(client, space, owner, **body)
    assert response.status == 422, await response.text()
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = await response.json()
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert "x" * 20 not in await response.text()  # a refused credential is not echoed back
    assert await counts(db, service["id"]) == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM service_installations WHERE space_id = $1", space) == 0


async def test_both_service_id_and_slug(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    response = await install(client, space, owner, service_id=service["id"], slug=service["slug"])
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["slug"]
    assert await counts(db, service["id"]) == (0, 0)


async def test_malformed_requests(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    base = f"{API}/spaces/{space}/installations"
    as_json, as_text = {**owner, "Content-Type": "application/json"}, {**owner, "Content-Type": "text/plain"}
    assert (await client.post(base, data=b"{not json", headers=as_json)).status == 400
    assert (await client.post(base, data=b"service_id=1", headers=as_text)).status == 415
    assert (await client.get(f"{API}/spaces/not-a-uuid/installations", headers=owner)).status == 404
    assert (await client.get(f"{base}/not-a-uuid", headers=owner)).status == 404
    assert (await client.delete(f"{base}/123", headers=owner)).status == 404
    assert await counts(db, service["id"]) == (0, 0)


async def test_bad_patches_change_nothing(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    inst = await (await install(client, space, owner, service_id=service["id"], config={"keep": 1},
                                credentials={"secret_name": "v"})).json()
    url = f"{API}/spaces/{space}/installations/{inst['id']}"
    before = await db.fetchrow("SELECT * FROM service_installations WHERE id = $1", UUID(inst["id"]))
    for body, field in [({"config": None}, "config"), ({"credentials": None}, "credentials"),
                        ({"status": None}, "status"), ({"status": "broken"}, "status"),
                        ({"config": {"token": "x"}}, "config"), ({"service_id": service["id"]}, "service_id"),
                        ({"credentials": {"a": 1}}, "credentials.a"), ({"installed_by": None}, "installed_by"),
                        ({"permissions": {"min_role": "platform_admin"}}, "permissions.min_role"),
                        ({"config": {"ok": 1}, "status": "nope"}, "status")]:
        response = await client.patch(url, json=body, headers=owner)
        assert response.status == 422, (body, await response.text())
        assert any(e["field"].startswith(field) for e in (await response.json())["errors"]), body
    assert await db.fetchrow("SELECT * FROM service_installations WHERE id = $1", UUID(inst["id"])) == before

    unchanged = await client.patch(url, json={}, headers=owner)
    assert unchanged.status == 200 and (await unchanged.json())["config"] == {"keep": 1}
