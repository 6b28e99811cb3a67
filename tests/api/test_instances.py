"""Infrastructure instances: round trips, who sees connection_config, encrypted secrets, bad input."""

from __future__ import annotations

import asyncio
import time

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from auth.api_keys import hash_api_key, new_api_key
from db.encryption import associated_data
from gateway.appkeys import KEYRING
from tests.api.helpers import SECRET_PASSWORD, instance_body, new_instance, space_with
from tests.factories import Factory

SECRET_TOKEN = "tok-" + uuid.uuid4().hex


async def instance_rows(db: asyncpg.Pool, space: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT *, connection_config::text AS config_text FROM infrastructure_instances "
                          "WHERE space_id = $1 ORDER BY created_at, id", space)
    return [dict(r) for r in rows]


async def test_create_read_list(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, owner_id = await space_with(make)
    response = await client.post(f"/api/v1/spaces/{space}/instances", json=instance_body(), headers=owner)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert response.headers["Location"] == f"/api/v1/spaces/{space}/instances/{created['id']}"
    assert created["space_id"] == str(space) and created["created_by"] == str(owner_id)
    assert created["connection_config"] == {"username": "deploy"}
    assert created["secret_keys"] == ["password"]
    assert created["tags"] == ["ci", "eu-west"] and created["resources"] == {"cpu": 4, "memory": "8GiB"}
    assert created["protocol"] == "ssh"  # the column default: the body did not send one

    read = await client.get(f"/api/v1/spaces/{space}/instances/{created['id']}", headers=owner)
    assert read.status == 200 and await read.json() == created

    listed = await (await client.get(f"/api/v1/spaces/{space}/instances", headers=owner)).json()
    assert listed == {"items": [created], "next_cursor": None}


async def test_minimal_body_takes_column_defaults(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    response = await client.post(f"/api/v1/spaces/{space}/instances",
                                 json={"name": "k8s", "type": "kubernetes", "host": "k8s.example.com"},
                                 headers=owner)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert (created["protocol"], created["status"]) == ("ssh", "unknown")
    assert created["connection_config"] == {} and created["secret_keys"] == []


async def test_secrets_are_encrypted_and_never_shown(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    response = await client.post(
        f"/api/v1/spaces/{space}/instances", headers=owner,
        json=instance_body(connection_config={"user": "root", "secrets": {"password": SECRET_PASSWORD,
                                                                          "private_key": SECRET_TOKEN}}))
    assert SECRET_PASSWORD not in await response.text() and SECRET_TOKEN not in await response.text()
    created = await response.json()
    assert created["secret_keys"] == ["password", "private_key"]

    [row] = await instance_rows(db, space)
    assert SECRET_PASSWORD not in row["config_text"] and SECRET_TOKEN not in row["config_text"]
    envelope = row["connection_config"]["secrets"]
    aad = associated_data("infrastructure_instances", row["id"], "connection_config.secrets")
    keyring = client.server.app[KEYRING]
    assert keyring.open(envelope, aad) == {"password": SECRET_PASSWORD, "private_key": SECRET_TOKEN}

    for path in (f"/api/v1/spaces/{space}/instances", f"/api/v1/spaces/{space}/instances/{row['id']}"):
        text = await (await client.get(path, headers=owner)).text()
        assert SECRET_PASSWORD not in text and '"ct"' not in text and '"nonce"' not in text


async def test_patch_changes_only_what_is_sent(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    created = await new_instance(client, space, owner)
    url = f"/api/v1/spaces/{space}/instances/{created['id']}"
    [before] = await instance_rows(db, space)

    response = await client.patch(url, json={"status": "offline", "port": 2222}, headers=owner)
    assert response.status == 200, await response.text()
    patched = await response.json()
    assert (patched["status"], patched["port"]) == ("offline", 2222)
    assert (patched["name"], patched["host"]) == ("build-01", "10.0.0.12")

    # connection_config without `secrets` replaces the rest and keeps the stored envelope as it was.
    response = await client.patch(url, json={"connection_config": {"username": "ops"}}, headers=owner)
    assert (await response.json())["connection_config"] == {"username": "ops"}
    assert (await response.json())["secret_keys"] == ["password"]
    [kept] = await instance_rows(db, space)
    assert kept["connection_config"]["secrets"] == before["connection_config"]["secrets"]

    response = await client.patch(url, json={"connection_config": {"secrets": {"token": SECRET_TOKEN}}}, headers=owner)
    assert (await response.json())["secret_keys"] == ["token"]
    assert SECRET_TOKEN not in await response.text()
    [resealed] = await instance_rows(db, space)
    assert SECRET_TOKEN not in resealed["config_text"]
    aad = associated_data("infrastructure_instances", resealed["id"], "connection_config.secrets")
    assert client.server.app[KEYRING].open(resealed["connection_config"]["secrets"], aad) == {"token": SECRET_TOKEN}

    response = await client.patch(url, json={"connection_config": {"secrets": {}}}, headers=owner)
    assert (await response.json())["secret_keys"] == []
    [cleared] = await instance_rows(db, space)
    assert cleared["connection_config"] == {}

    response = await client.patch(url, json={"name": None}, headers=owner)
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "name"


async def test_delete_is_soft_and_hides_the_row(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    created = await new_instance(client, space, owner)
    url = f"/api/v1/spaces/{space}/instances/{created['id']}"
    assert (await client.delete(url, headers=owner)).status == 204
    assert (await client.get(url, headers=owner)).status == 404
    assert (await client.patch(url, json={"status": "error"}, headers=owner)).status == 404
    assert (await client.delete(url, headers=owner)).status == 404
    assert (await (await client.get(f"/api/v1/spaces/{space}/instances", headers=owner)).json())["items"] == []
    [row] = await instance_rows(db, space)
    assert row["deleted_at"] is not None


async def test_connection_config_only_for_admins(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    created = await new_instance(client, space, owner)
    url = f"/api/v1/spaces/{space}/instances/{created['id']}"
    for role in ("member", "viewer"):
        headers = make.auth(await make.member(space, role))
        one = await (await client.get(url, headers=headers)).json()
        listed = await (await client.get(f"/api/v1/spaces/{space}/instances", headers=headers)).json()
        for view in (one, listed["items"][0]):
            assert view["id"] == created["id"] and view["host"] == "10.0.0.12"
            assert "connection_config" not in view and "secret_keys" not in view
    for headers in (make.auth(await make.member(space, "admin")), await make.admin()):
        view = await (await client.get(url, headers=headers)).json()
        assert view["connection_config"] == {"username": "deploy"} and view["secret_keys"] == ["password"]


async def test_authorization(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space_a, owner_a, _ = await space_with(make)
    space_b, owner_b, _ = await space_with(make)
    instance = await new_instance(client, space_a, owner_a)
    url_a = f"/api/v1/spaces/{space_a}/instances"

    viewer_a = make.auth(await make.member(space_a, "viewer"))
    member_a = make.auth(await make.member(space_a, "member"))
    for headers in (viewer_a, member_a):
        assert (await client.get(url_a, headers=headers)).status == 200
        assert (await client.post(url_a, json=instance_body(), headers=headers)).status == 403
        assert (await client.patch(f"{url_a}/{instance['id']}", json={"port": 1}, headers=headers)).status == 403
        assert (await client.delete(f"{url_a}/{instance['id']}", headers=headers)).status == 403

    member_b = make.auth(await make.member(space_b, "member"))
    assert (await client.get(url_a, headers=member_b)).status == 403
    assert (await client.get(f"{url_a}/{instance['id']}", headers=owner_b)).status == 403

    # A's instance under B's path: B's owner may act in B, but the row is not B's.
    url_b = f"/api/v1/spaces/{space_b}/instances/{instance['id']}"
    assert (await client.get(url_b, headers=owner_b)).status == 404
    assert (await client.patch(url_b, json={"port": 1}, headers=owner_b)).status == 404
    assert (await client.delete(url_b, headers=owner_b)).status == 404
    assert (await client.get(f"{url_a}/not-a-uuid", headers=owner_a)).status == 404
    assert (await client.get(url_a)).status == 401

    admin = await make.admin()
    response = await client.patch(f"{url_a}/{instance['id']}", json={"port": 2200}, headers=admin)
    assert response.status == 200 and (await response.json())["port"] == 2200
    assert (await client.post(url_a, json=instance_body(name="by-admin"), headers=admin)).status == 201

    rows = await instance_rows(db, space_a)
    assert [(r["name"], r["port"], r["deleted_at"]) for r in rows] == [("build-01", 2200, None), ("by-admin", 22, None)]


async def test_api_key_caller_has_no_created_by(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space = await make.space()
    key, prefix = new_api_key()
    await db.execute("INSERT INTO api_keys (space_id, name, role, prefix, key_hash) VALUES ($1, 'ci', 'admin', $2, $3)",
                     space, prefix, hash_api_key(key))
    # Every node learns key hashes from the api_keys notification: wait until this one knows it.
    deadline = time.monotonic() + 10
    while (await client.get(f"/api/v1/spaces/{space}/instances", headers={"X-API-Key": key})).status == 401:
        assert time.monotonic() < deadline, "the key inserted into the table never became known"
        await asyncio.sleep(0.05)
    created = await new_instance(client, space, {"X-API-Key": key})
    assert created["created_by"] is None and created["secret_keys"] == ["password"]


async def test_pagination(client: TestClient, make: Factory) -> None:
    space, owner, _ = await space_with(make)
    ids = [(await new_instance(client, space, owner, name=f"node-{i}"))["id"] for i in range(3)]
    first = await (await client.get(f"/api/v1/spaces/{space}/instances?limit=2", headers=owner)).json()
    assert [i["id"] for i in first["items"]] == ids[:2] and first["next_cursor"]
    second = await (await client.get(f"/api/v1/spaces/{space}/instances?limit=2&cursor={first['next_cursor']}",
                                     headers=owner)).json()
    assert [i["id"] for i in second["items"]] == ids[2:] and second["next_cursor"] is None



async def test_pagination_over_rows_without_a_sort_time(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    """The seed's timestamps are nullable and the host platform writes rows too: a NULL created_at
    sorts as the epoch (first), and paging across it neither answers 500 nor loses a row."""
    space, owner, _ = await space_with(make)
    ids = [(await new_instance(client, space, owner, name=f"node-{i}"))["id"] for i in range(4)]
    await db.execute("UPDATE infrastructure_instances SET created_at = NULL WHERE id = ANY($1::uuid[])", ids[2:])
    seen, cursor = [], ""
    for _ in range(5):
        response = await client.get(f"/api/v1/spaces/{space}/instances?limit=1{cursor}", headers=owner)
        assert response.status == 200, await response.text()
        body = await response.json()
        seen += [i["id"] for i in body["items"]]
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == sorted(ids[2:]) + ids[:2]


BAD_BODIES = [
    ("unknown field", {"colour": "blue"}, "colour"),
    ("wrong type", {"port": "22"}, "port"),
    ("bad type enum", {"type": "mainframe"}, "type"),
    ("bad status enum", {"status": "sleeping"}, "status"),
    ("bad connection_type", {"connection_type": "telnet"}, "connection_type"),
    ("port 0", {"port": 0}, "port"),
    ("port 70000", {"port": 70000}, "port"),
    ("over-long name", {"name": "n" * 256}, "name"),
    ("host with scheme", {"host": "ssh://10.0.0.1"}, "host"),
    ("host with whitespace", {"host": "bad host"}, "host"),
    ("over-long host", {"host": "h" * 256}, "host"),
    ("protocol upper-case", {"protocol": "SSH"}, "protocol"),
    ("protocol too long", {"protocol": "a" * 11}, "protocol"),
    ("over-long os_type", {"os_type": "x" * 51}, "os_type"),
    ("secret key outside secrets", {"connection_config": {"password": "x"}}, "connection_config"),
    ("nested secret key", {"connection_config": {"auth": {"kubeconfig": "x"}}}, "connection_config"),
    ("secrets not strings", {"connection_config": {"secrets": {"password": 1}}}, "connection_config"),
    ("tags not strings", {"tags": [1]}, "tags.0"),
    ("resources not an object", {"resources": [1]}, "resources"),
    ("NUL byte", {"name": "bad\x00name"}, "name"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_changes_nothing(client: TestClient, make: Factory, db: asyncpg.Pool,
                                         case: str, change: dict[str, Any], field: str) -> None:
    space, owner, _ = await space_with(make)
    created = await new_instance(client, space, owner)
    before = await instance_rows(db, space)

    response = await client.post(f"/api/v1/spaces/{space}/instances", json=instance_body(**change), headers=owner)
    assert response.status == 422, case
    assert response.headers["Content-Type"] == "application/problem+json"
    assert field in [e["field"] for e in (await response.json())["errors"]]

    response = await client.patch(f"/api/v1/spaces/{space}/instances/{created['id']}", json=change, headers=owner)
    assert response.status == 422, case
    assert await instance_rows(db, space) == before


async def test_malformed_and_non_json_bodies(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    space, owner, _ = await space_with(make)
    url = f"/api/v1/spaces/{space}/instances"
    response = await client.post(url, data=b"{not json", headers={**owner, "Content-Type": "application/json"})
    assert response.status == 400
    response = await client.post(url, data=b"name=x", headers={**owner, "Content-Type": "text/plain"})
    assert response.status == 415
    response = await client.post(url, json={"type": "vm", "host": "h"}, headers=owner)
    assert response.status == 422 and "name" in [e["field"] for e in (await response.json())["errors"]]
    assert await instance_rows(db, space) == []
