"""Installation credentials at rest: encrypted, bound to their row, never shown, keys rotate."""

from __future__ import annotations

import secrets
from uuid import UUID

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from db.encryption import DecryptionError, KeyRing, associated_data, generate_key_ring_entry
from tests.api.helpers import API, install, register_service, space_with
from tests.conftest import ENCRYPTION_KEYS
from tests.factories import Factory


def aad(installation_id: str | UUID) -> bytes:
    return associated_data("service_installations", UUID(str(installation_id)), "credentials")


async def stored(db: asyncpg.Pool, installation_id: str) -> dict[str, object]:
    envelope: dict[str, object] = await db.fetchval(
        "SELECT credentials FROM service_installations WHERE id = $1", UUID(installation_id))
    return envelope


async def test_credentials_are_encrypted_and_bound_to_their_row(client: TestClient, make: Factory,
                                                                db: asyncpg.Pool) -> None:
    secret = f"sk-live-{secrets.token_hex(16)}"
    service, _ = await register_service(client, make)
    space_a, owner_a, _ = await space_with(make)
    space_b, owner_b, _ = await space_with(make)
    responses = []

    created = await install(client, space_a, owner_a, service_id=service["id"],
                            credentials={"api_key": secret, "user": "reports"})
    assert created.status == 201
    responses.append(await created.text())
    inst_a = await created.json()
    assert inst_a["credential_keys"] == ["api_key", "user"]
    url_a = f"{API}/spaces/{space_a}/installations/{inst_a['id']}"
    responses.append(await (await client.get(url_a, headers=owner_a)).text())
    responses.append(await (await client.get(f"{API}/spaces/{space_a}/installations", headers=owner_a)).text())
    patched = await client.patch(url_a, json={"status": "inactive"}, headers=owner_a)
    responses.append(await patched.text())
    refused = await client.patch(url_a, json={"credentials": {"api_key": secret, "n": 1}}, headers=owner_a)
    assert refused.status == 422
    responses.append(await refused.text())
    assert all(secret not in text for text in responses)

    envelope = await stored(db, inst_a["id"])
    assert secret not in orjson.dumps(envelope).decode()
    assert envelope["keys"] == ["api_key", "user"] and "ct" in envelope and "kid" in envelope
    ring = KeyRing.parse(ENCRYPTION_KEYS)
    assert ring.open(envelope, aad(inst_a["id"])) == {"api_key": secret, "user": "reports"}

    # Moved into another tenant's row, the ciphertext no longer opens.
    inst_b = await (await install(client, space_b, owner_b, service_id=service["id"],
                                  credentials={"api_key": "theirs"})).json()
    await db.execute("UPDATE service_installations SET credentials = $1 WHERE id = $2",
                     envelope, UUID(inst_b["id"]))
    with pytest.raises(DecryptionError):
        ring.open(await stored(db, inst_b["id"]), aad(inst_b["id"]))
    # Responses still show only the names, never values, even for the tampered row.
    read_b = await client.get(f"{API}/spaces/{space_b}/installations/{inst_b['id']}", headers=owner_b)
    assert read_b.status == 200 and secret not in await read_b.text()

    # Replacing credentials re-encrypts under the same row; the old values are gone.
    replaced = await client.patch(url_a, json={"credentials": {"token": "t-" + secret[::-1]}}, headers=owner_a)
    assert (await replaced.json())["credential_keys"] == ["token"]
    assert ring.open(await stored(db, inst_a["id"]), aad(inst_a["id"])) == {"token": "t-" + secret[::-1]}


async def test_revived_installation_is_sealed_for_its_own_row(client: TestClient, make: Factory,
                                                             db: asyncpg.Pool) -> None:
    service, _ = await register_service(client, make)
    space, owner, _ = await space_with(make)
    first = await (await install(client, space, owner, service_id=service["id"], credentials={"a": "1"})).json()
    assert (await client.delete(f"{API}/spaces/{space}/installations/{first['id']}", headers=owner)).status == 204
    again = await (await install(client, space, owner, service_id=service["id"], credentials={"b": "2"})).json()
    assert again["id"] == first["id"]
    assert KeyRing.parse(ENCRYPTION_KEYS).open(await stored(db, again["id"]), aad(again["id"])) == {"b": "2"}


def test_fresh_nonce_and_key_rotation() -> None:
    ring = KeyRing.parse(ENCRYPTION_KEYS)
    row = UUID("00000000-0000-4000-8000-000000000001")
    values = {"api_key": "same value"}
    one, two = ring.seal(values, aad(row)), ring.seal(values, aad(row))
    assert one["nonce"] != two["nonce"] and one["ct"] != two["ct"]
    assert ring.seal({}, aad(row)) == {}

    # A new first key encrypts from now on; the old ones still open what they sealed.
    rotated = KeyRing.parse(f"{generate_key_ring_entry('t3')},{ENCRYPTION_KEYS}")
    assert rotated.open(one, aad(row)) == values
    fresh = rotated.seal(values, aad(row))
    assert fresh["kid"] == "t3" and rotated.needs_rotation(one) and not rotated.needs_rotation(fresh)
    with pytest.raises(DecryptionError):
        ring.open(fresh, aad(row))  # the old ring does not know the new key
    with pytest.raises(DecryptionError):
        ring.open({**one, "ct": two["ct"]}, aad(row))  # tampered
