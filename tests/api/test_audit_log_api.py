"""GET /spaces/{space_id}/audit-log and GET /audit-log (contract revision 3, "Audit log"): what the
API's own writes recorded (actor, request id from X-Request-ID, changed fields, secrets as names),
who may read which rows, filters, cursor pages, and the OpenAPI document."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.helpers import (
    API, SECRET_PASSWORD, Headers, assert_problem, install, new_instance, register_service, space_with,
)
from tests.factories import Factory

CREDENTIAL = "secret-p-" + uuid.uuid4().hex[:10]  # a shape the test log scan knows


def log_url(space: UUID | str) -> str:
    return f"{API}/spaces/{space}/audit-log"


async def entries(client: TestClient, url: str, headers: Headers, **query: str) -> list[dict[str, Any]]:
    response = await client.get(url, headers=headers, params=query)
    assert response.status == 200, await response.text()
    items: list[dict[str, Any]] = (await response.json())["items"]
    return items


async def test_the_api_s_writes_are_recorded_with_actor_request_and_no_secret(client: TestClient,
                                                                             make: Factory) -> None:
    service, vendor = await register_service(client, make)
    space, owner, owner_id = await space_with(make)
    created = await client.post(f"{API}/spaces/{space}/installations", headers={**owner, "X-Request-ID": "install-1"},
                                json={"service_id": service["id"], "credentials": {"client_secret": CREDENTIAL}})
    assert created.status == 201, await created.text()
    installation = await created.json()
    patched = await client.patch(f"{API}/spaces/{space}/installations/{installation['id']}",
                                 headers={**owner, "X-Request-ID": "patch-1"},
                                 json={"config": {"tier": "gold"}, "credentials": {"token": CREDENTIAL}})
    assert patched.status == 200, await patched.text()
    instance = await new_instance(client, space, owner)

    response = await client.get(log_url(space), headers=owner)
    assert response.status == 200
    text = await response.text()
    assert CREDENTIAL not in text and SECRET_PASSWORD not in text
    items = (await response.json())["items"]
    assert [(e["table_name"], e["action"]) for e in items] == [  # newest first
        ("infrastructure_instances", "insert"), ("service_installations", "update"),
        ("service_installations", "insert")]
    made, changed, installed = items
    assert all(e["space_id"] == str(space) and e["actor_user_id"] == str(owner_id) for e in items)
    assert all(e["actor_api_key_id"] is None for e in items)
    assert installed["request_id"] == "install-1" and changed["request_id"] == "patch-1"
    assert installed["row_id"] == installation["id"] and installed["old_values"] is None
    assert installed["new_values"]["credentials"] == ["client_secret"]
    assert changed["changed_fields"] == ["config", "credentials"]
    assert changed["old_values"]["credentials"] == ["client_secret"]
    assert changed["new_values"]["credentials"] == ["token"] and changed["new_values"]["config"] == {"tier": "gold"}
    assert made["row_id"] == instance["id"]
    assert made["new_values"]["connection_config"]["secrets"] == ["password"]
    assert made["request_id"]  # a request id of the gateway's own when the client sent none
    assert len(made["hash"]) == 64 and len(made["prev_hash"]) == 64
    assert items[1]["hash"] == made["prev_hash"] and items[2]["hash"] == items[1]["prev_hash"]
    assert installed["prev_hash"] == "0" * 64  # the space's first row

    # The service's registration is a marketplace row: not in the space's log.
    assert all(e["row_id"] != service["id"] for e in items)
    assert vendor


async def test_an_api_key_is_named_as_the_actor(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    key = await (await client.post(f"{API}/spaces/{space}/api-keys", json={"name": "ops", "role": "admin"},
                                   headers=owner)).json()
    as_key = {"X-API-Key": key["key"], "X-Request-ID": "by-key-1"}
    instance = await new_instance(client, space, as_key)
    [made] = await entries(client, log_url(space), as_key, row_id=instance["id"])
    assert made["actor_api_key_id"] == key["id"] and made["actor_user_id"] is None
    assert made["request_id"] == "by-key-1"
    [minted] = await entries(client, log_url(space), owner, table="api_keys")
    assert minted["new_values"]["key_hash"] == "[set]" and key["key"] not in str(minted)


async def test_who_may_read_a_space_s_log(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    await new_instance(client, space, owner)
    admin_user = make.auth(await make.member(space, "admin"))
    member = make.auth(await make.member(space, "member"))
    other_space, other_owner, _ = await space_with(make)
    platform_admin = await make.admin()
    assert len(await entries(client, log_url(space), owner)) == 1
    assert len(await entries(client, log_url(space), admin_user)) == 1
    assert len(await entries(client, log_url(space), platform_admin)) == 1
    await assert_problem(await client.get(log_url(space), headers=member), 403)
    await assert_problem(await client.get(log_url(space), headers=other_owner), 403)  # another space's owner
    await assert_problem(await client.get(log_url(space)), 401)
    viewer_key = await (await client.post(f"{API}/spaces/{space}/api-keys", json={"name": "v", "role": "viewer"},
                                          headers=owner)).json()
    await assert_problem(await client.get(log_url(space), headers={"X-API-Key": viewer_key["key"]}), 403)
    await assert_problem(await client.get(log_url(uuid.uuid4()), headers=platform_admin), 404)
    assert other_space


async def test_filters_and_pages(client: TestClient, make: Factory) -> None:
    space, owner, owner_id = await space_with(make)
    instances = [await new_instance(client, space, owner, name=f"vm-{i}") for i in range(3)]
    first = instances[0]["id"]
    assert (await client.patch(f"{API}/spaces/{space}/instances/{first}", json={"host": "10.0.0.99"},
                               headers=owner)).status == 200
    url = log_url(space)
    everything = await entries(client, url, owner)
    assert len(everything) == 4
    assert [e["row_id"] for e in await entries(client, url, owner, row_id=first)] == [first, first]
    assert [e["action"] for e in await entries(client, url, owner, action="update")] == ["update"]
    assert len(await entries(client, url, owner, table="infrastructure_instances")) == 4
    assert await entries(client, url, owner, table="api_keys") == []
    assert len(await entries(client, url, owner, actor_user_id=str(owner_id))) == 4
    assert await entries(client, url, owner, actor_user_id=str(uuid.uuid4())) == []
    now = datetime.now(timezone.utc)
    assert len(await entries(client, url, owner, since=(now - timedelta(hours=1)).isoformat())) == 4
    assert await entries(client, url, owner, since=(now + timedelta(hours=1)).isoformat()) == []
    assert await entries(client, url, owner, until=(now - timedelta(hours=1)).isoformat()) == []

    seen, cursor = [], None
    while True:
        response = await client.get(url, headers=owner, params={"limit": "3", **({"cursor": cursor} if cursor else {})})
        assert response.status == 200
        page = await response.json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in everything] and seen == sorted(seen, reverse=True)

    for params, field in [({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "WzEsMl0"}, "cursor"),
                          ({"limit": "0"}, "limit"), ({"since": "2025-01-01T00:00:00"}, "since"),
                          ({"until": "9999-12-31T23:59:59-14:00"}, "until"), ({"row_id": "x"}, "row_id"),
                          ({"action": "drop"}, "action"), ({"table": "users"}, "table")]:
        await assert_problem(await client.get(url, headers=owner, params=params), 422, field)


async def test_the_platform_log_shows_the_marketplace_and_one_space_on_request(client: TestClient,
                                                                               make: Factory) -> None:
    service, vendor = await register_service(client, make)
    space, owner, _ = await space_with(make)
    assert (await install(client, space, owner, service_id=service["id"])).status == 201
    admin = await make.admin()
    marketplace = await entries(client, f"{API}/audit-log", admin, row_id=service["id"])
    tables = [(e["table_name"], e["action"]) for e in marketplace]
    assert ("service_registry", "insert") in tables and ("service_maintainers", "insert") in tables
    assert ("service_registry", "update") in tables  # its approval
    assert all(e["space_id"] is None for e in marketplace)
    one_space = await entries(client, f"{API}/audit-log", admin, space_id=str(space))
    assert [(e["table_name"], e["space_id"]) for e in one_space] == [("service_installations", str(space))]
    await assert_problem(await client.get(f"{API}/audit-log", headers=owner), 403)
    await assert_problem(await client.get(f"{API}/audit-log", headers=vendor), 403)


async def test_the_database_filters_the_log_by_space_too(client: TestClient, make: Factory,
                                                         database_url: str) -> None:
    """A query without its space filter, through the role and settings the API uses, still shows
    only the transaction's space (row-level security), never another's."""
    from db.audit import Filters, list_statement
    from db.pagination import IdPageRequest
    from db.pool import Database

    a, owner_a, _ = await space_with(make)
    b, owner_b, _ = await space_with(make)
    await new_instance(client, a, owner_a)
    await new_instance(client, b, owner_b)
    statement, args = list_statement(a, Filters(), IdPageRequest(limit=100))
    unfiltered = statement.replace("space_id = $1", "$1::uuid IS NOT NULL")  # the filter left out
    database = Database(database_url, role="gateway_app")
    await database.connect()
    try:
        async with database.transaction(space_id=a) as conn:
            rows = await conn.fetch(unfiltered, *args)
        async with database.transaction(space_id=a) as conn:
            assert await conn.fetchval("SELECT current_user") == "gateway_app"
    finally:
        await database.close()
    assert rows and {r["space_id"] for r in rows} == {a}


async def test_the_endpoints_are_in_the_served_openapi_document(client: TestClient) -> None:
    document = await (await client.get(f"{API}/openapi.json")).json()
    space_log = document["paths"][f"{API}/spaces/{{space_id}}/audit-log"]["get"]
    platform_log = document["paths"][f"{API}/audit-log"]["get"]
    for operation in (space_log, platform_log):
        names = {p["name"] for p in operation["parameters"]}
        assert {"table", "row_id", "actor_user_id", "action", "since", "until", "limit", "cursor"} <= names
        assert {"200", "401", "403", "422", "429", "503"} <= set(operation["responses"])
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/AuditEntryPage"}
    assert "404" in space_log["responses"]
    assert "space_id" in {p["name"] for p in platform_log["parameters"]}
    entry = document["components"]["schemas"]["AuditEntry"]["properties"]
    assert {"id", "occurred_at", "space_id", "actor_user_id", "actor_api_key_id", "request_id", "action",
            "table_name", "row_id", "changed_fields", "old_values", "new_values", "prev_hash", "hash"} <= set(entry)


async def test_verify_holds_after_the_api_s_writes(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    from db import audit

    space, owner, _ = await space_with(make)
    await new_instance(client, space, owner)
    async with db.acquire() as conn:
        verdict = await audit.verify(conn)
    assert verdict.ok and verdict.checked > 0, verdict
