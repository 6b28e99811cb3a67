"""API keys: create (shown once), list, revoke; who may manage them; keys as callers."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import API, install, listed_installations, register_service, space_with
from tests.factories import Factory


def keys_url(space: UUID) -> str:
    return f"{API}/spaces/{space}/api-keys"


async def new_key(client: TestClient, space: UUID, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post(keys_url(space), json={"name": "ci", **body}, headers=headers)
    assert response.status == 201, await response.text()
    key: dict[str, Any] = await response.json()
    return key


async def live_keys(db: asyncpg.Pool, space: UUID) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM api_keys WHERE space_id = $1 AND revoked_at IS NULL", space))


async def test_create_list_revoke(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    created = await client.post(keys_url(space), json={"name": "deploy bot"}, headers=owner)
    assert created.status == 201, await created.text()
    key = await created.json()
    assert created.headers["Location"] == f"{keys_url(space)}/{key['id']}"
    assert set(key) == {"id", "space_id", "name", "role", "prefix", "created_by", "created_at",
                        "last_used_at", "key"}
    assert key["name"] == "deploy bot" and key["role"] == "member" and key["last_used_at"] is None
    assert key["key"].startswith(key["prefix"] + "_") and key["prefix"].startswith("pgw_")
    stored = await db.fetchrow("SELECT key_hash, created_by FROM api_keys WHERE id = $1", UUID(key["id"]))
    assert bytes(stored["key_hash"]) == hashlib.sha256(key["key"].encode()).digest()
    assert str(stored["created_by"]) == key["created_by"]

    listed = await client.get(keys_url(space), headers=owner)
    assert listed.status == 200
    page = await listed.json()
    shown = {k: v for k, v in key.items() if k != "key"}
    assert page == {"items": [shown], "next_cursor": None}
    assert key["key"] not in await listed.text() and "key_hash" not in await listed.text()

    # The key works as a caller until it is revoked, then it is refused like an unknown one.
    as_key = {"X-API-Key": key["key"]}
    assert (await client.get(f"{API}/spaces/{space}/installations", headers=as_key)).status == 200
    assert (await client.delete(f"{keys_url(space)}/{key['id']}", headers=owner)).status == 204
    for headers in (as_key, {"Authorization": f"Bearer {key['key']}"}):
        refused = await client.get(f"{API}/spaces/{space}/installations", headers=headers)
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert key["key"] not in await refused.text()
    assert await (await client.get(keys_url(space), headers=owner)).json() == {"items": [], "next_cursor": None}
    assert (await client.delete(f"{keys_url(space)}/{key['id']}", headers=owner)).status == 404
    assert (await client.delete(f"{keys_url(space)}/{uuid.uuid4()}", headers=owner)).status == 404
    assert (await client.delete(f"{keys_url(space)}/not-a-uuid", headers=owner)).status == 404


async def test_pagination(client: TestClient, make: Factory) -> None:
    space, admin, _ = await space_with(make, "admin")
    names = [f"key-{n}" for n in range(5)]
    for name in names[:4]:
        await new_key(client, space, admin, name=name)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = await (await client.get(keys_url(space) + query, headers=admin)).json()
        seen += [item["name"] for item in page["items"]]
        if len(seen) == 2:
            await new_key(client, space, admin, name=names[4])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


async def test_role_ceiling(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, admin, _ = await space_with(make, "admin")
    refused = await client.post(keys_url(space), json={"name": "root", "role": "owner"}, headers=admin)
    assert refused.status == 403
    assert await live_keys(db, space) == 0
    assert (await new_key(client, space, admin, role="admin"))["role"] == "admin"
    assert (await new_key(client, space, admin, role="viewer"))["role"] == "viewer"

    owner = make.auth(await make.member(space, "owner"))
    assert (await new_key(client, space, owner, role="owner"))["role"] == "owner"
    platform_admin = await make.admin()
    assert (await new_key(client, space, platform_admin, role="owner"))["created_by"] is not None
    assert await live_keys(db, space) == 4


async def test_who_may_manage_keys(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space_a, owner_a, _ = await space_with(make)
    space_b, owner_b, _ = await space_with(make)
    key_a = await new_key(client, space_a, owner_a)
    key_b = await new_key(client, space_b, owner_b)

    outsiders = [make.auth(await make.member(space_a, "member")), make.auth(await make.member(space_a, "viewer")),
                 owner_b, make.auth(await make.user())]
    for headers in outsiders:
        assert (await client.get(keys_url(space_a), headers=headers)).status == 403
        assert (await client.post(keys_url(space_a), json={"name": "x"}, headers=headers)).status == 403
        assert (await client.delete(f"{keys_url(space_a)}/{key_a['id']}", headers=headers)).status == 403
    assert (await client.get(keys_url(space_a))).status == 401

    # Space B's key under space A's path does not exist there.
    assert (await client.delete(f"{keys_url(space_a)}/{key_b['id']}", headers=owner_a)).status == 404
    assert await live_keys(db, space_a) == 1 and await live_keys(db, space_b) == 1

    platform_admin = await make.admin()
    assert len((await (await client.get(keys_url(space_a), headers=platform_admin)).json())["items"]) == 1
    assert (await client.delete(f"{keys_url(space_a)}/{key_a['id']}", headers=platform_admin)).status == 204
    assert await live_keys(db, space_a) == 0
    nowhere = await client.post(keys_url(uuid.uuid4()), json={"name": "x"}, headers=platform_admin)
    assert nowhere.status == 404


async def test_keys_as_callers(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    other, _ = await register_service(client, make)
    space_a, owner_a, _ = await space_with(make)
    space_b, _, _ = await space_with(make)
    admin_key = (await new_key(client, space_a, owner_a, role="admin"))["key"]
    owner_key = (await new_key(client, space_a, owner_a, role="owner"))["key"]
    viewer_key = (await new_key(client, space_a, owner_a, role="viewer"))["key"]

    by_header = await install(client, space_a, {"X-API-Key": admin_key}, service_id=service["id"])
    assert by_header.status == 201, await by_header.text()
    assert (await by_header.json())["installed_by"] is None
    bearer = {"Authorization": f"Bearer {admin_key}"}
    by_bearer = await install(client, space_a, bearer, slug=other["slug"])
    assert by_bearer.status == 201, await by_bearer.text()
    assert len(await listed_installations(client, space_a, bearer)) == 2

    viewer = {"X-API-Key": viewer_key}
    assert (await client.get(f"{API}/spaces/{space_a}/installations", headers=viewer)).status == 200
    installation_url = f"{API}/spaces/{space_a}/installations/{(await by_header.json())['id']}"
    assert (await client.delete(installation_url, headers=viewer)).status == 403

    # A key acts in its own space only.
    assert (await install(client, space_b, bearer, service_id=service["id"])).status == 403
    assert (await client.get(f"{API}/spaces/{space_b}/installations", headers=bearer)).status == 403

    # Keys do not mint, list or revoke keys, not even an owner key in its own space.
    for headers in ({"X-API-Key": owner_key}, bearer):
        assert (await client.get(keys_url(space_a), headers=headers)).status == 403
        assert (await client.post(keys_url(space_a), json={"name": "child"}, headers=headers)).status == 403
        some_key = await db.fetchval("SELECT id FROM api_keys WHERE space_id = $1 LIMIT 1", space_a)
        assert (await client.delete(f"{keys_url(space_a)}/{some_key}", headers=headers)).status == 403
    assert await live_keys(db, space_a) == 3
    assert await db.fetchval("SELECT count(*) FROM service_installations WHERE space_id = $1", space_b) == 0

    unknown = await client.get(f"{API}/spaces/{space_a}/installations", headers={"X-API-Key": "pgw_nope_nope"})
    assert unknown.status == 401 and unknown.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("body", "field"), [
    pytest.param({"name": "x", "scope": "all"}, "scope", id="unknown-field"),
    pytest.param({"name": "x", "role": "god"}, "role", id="bad-role"),
    pytest.param({"name": "x", "role": None}, "role", id="null-role"),
    pytest.param({"name": ""}, "name", id="empty-name"),
    pytest.param({"name": "n" * 256}, "name", id="long-name"),
    pytest.param({"name": 7}, "name", id="wrong-type"),
    pytest.param({"role": "admin"}, "name", id="no-name"),
    pytest.param({"name": "a\x00b"}, "name", id="nul-byte"),
    pytest.param({"name": "x", "key": "pgw_mine_chosen"}, "key", id="chosen-key"),
])
async def test_bad_bodies_change_nothing(client: TestClient, make: Factory, db: asyncpg.Pool,
                                         body: dict[str, Any], field: str) -> None:
    space, owner, _ = await space_with(make)
    response = await client.post(keys_url(space), json=body, headers=owner)
    assert response.status == 422, await response.text()
    assert [e["field"] for e in (await response.json())["errors"]] == [field]
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE space_id = $1", space) == 0
