"""rotate-keys: every sealed value ends under the first key, still opens, and a re-run is a no-op."""

from __future__ import annotations

import uuid

import asyncpg

from db.encryption import KeyRing, associated_data, generate_key_ring_entry
from db.rotate import rotate
from tests.conftest import ENCRYPTION_KEYS
from tests.factories import Factory


async def test_rotation_reseals_under_the_first_key(db: asyncpg.Pool, make: Factory) -> None:
    old_key = generate_key_ring_entry("old")
    old_ring = KeyRing.parse(old_key)
    new_ring = KeyRing.parse(f"{ENCRYPTION_KEYS},{old_key}")  # new first key, old one still decrypts

    service = await db.fetchval("INSERT INTO service_registry (name, slug, version, provider, status) "
                                "VALUES ('r', $1, '1', 'p', 'approved') RETURNING id", f"rot-{uuid.uuid4().hex[:8]}")
    space = await make.space()
    installation = uuid.uuid4()
    aad = associated_data("service_installations", installation, "credentials")
    await db.execute("INSERT INTO service_installations (id, service_id, space_id, credentials) VALUES ($1, $2, $3, $4)",
                     installation, service, space, old_ring.seal({"api_key": "rotate-me"}, aad))
    instance = uuid.uuid4()
    instance_aad = associated_data("infrastructure_instances", instance, "connection_config.secrets")
    await db.execute("INSERT INTO infrastructure_instances (id, name, type, host, space_id, connection_config) "
                     "VALUES ($1, 'vm', 'vm', 'h', $2, $3)",
                     instance, space, {"user": "ops", "secrets": old_ring.seal({"password": "pw"}, instance_aad)})

    async with db.acquire() as conn:
        first = {r.table: r.rotated for r in await rotate(conn, new_ring)}
        again = {r.table: r.rotated for r in await rotate(conn, new_ring)}
    assert first["service_installations"] >= 1 and first["infrastructure_instances"] >= 1
    assert set(again.values()) == {0}

    stored = await db.fetchval("SELECT credentials FROM service_installations WHERE id = $1", installation)
    assert stored["kid"] == new_ring.primary
    assert new_ring.open(stored, aad) == {"api_key": "rotate-me"}
    config = await db.fetchval("SELECT connection_config FROM infrastructure_instances WHERE id = $1", instance)
    assert config["user"] == "ops" and config["secrets"]["kid"] == new_ring.primary
    assert new_ring.open(config["secrets"], instance_aad) == {"password": "pw"}
