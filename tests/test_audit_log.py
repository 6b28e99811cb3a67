"""The audit log (contract revision 3, "Audit log"), at the database: written by triggers in the
transaction of each change, as the role the gateway runs its queries as (gateway_app, row-level
security on), with the actor and request id of the transaction's settings; secrets reduced to
names; bookkeeping not a change; append-only for every role; one hash chain per space and one for
the marketplace, consistent under concurrent writers; `gateway audit verify` catching tampering."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from yarl import URL

from db import audit
from db.encryption import KeyRing, associated_data
from db.pool import SET_CALLER, create_pool
from tests.conftest import ENCRYPTION_KEYS, create_database, drop_database
from tests.factories import Factory

ROLE = "gateway_app"
ROOT = Path(__file__).resolve().parent.parent
ZERO = bytes(32)


@pytest.fixture(scope="module")
async def as_role(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The pool the gateway's queries run through: every query as gateway_app."""
    pool = await create_pool(database_url, min_size=1, max_size=12, role=ROLE)
    yield pool
    await pool.close()


@asynccontextmanager
async def caller(pool: asyncpg.Pool, *, space: UUID | None = None, user: UUID | None = None,
                 api_key: UUID | None = None, request_id: str = "", admin: bool = False
                 ) -> AsyncIterator[asyncpg.Connection]:
    """One transaction carrying the caller, exactly as db/pool.py's Database.transaction sets it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SET_CALLER, str(user or ""), str(space or ""), "on" if admin else "off",
                           str(api_key or ""), request_id)
        yield conn


async def audit_rows(db: asyncpg.Pool, **where: Any) -> list[dict[str, Any]]:
    """Audit rows (read as the superuser) matching `where`, oldest first."""
    conditions = " AND ".join(f"{name} = ${i}" for i, name in enumerate(where, 1)) or "true"
    return [dict(r) for r in await db.fetch(
        f"SELECT * FROM audit_log WHERE {conditions} ORDER BY id", *where.values())]


async def new_service(db: asyncpg.Pool) -> UUID:
    service: UUID = await db.fetchval(
        "INSERT INTO service_registry (name, slug, version, provider, status) "
        "VALUES ('Audited', $1, '1', 'v', 'approved') RETURNING id", f"audited-{uuid.uuid4().hex[:8]}")
    return service


KEYRING = KeyRing.parse(ENCRYPTION_KEYS)
CREDENTIAL = "secret-" + uuid.uuid4().hex[:8] + "-" + uuid.uuid4().hex[:4]  # a shape the log scan knows


def sealed(table: str, row_id: UUID, column: str, values: dict[str, Any]) -> dict[str, Any]:
    return KEYRING.seal(values, associated_data(table, row_id, column))


async def test_every_change_of_a_space_row_is_recorded_with_its_actor_and_request(
        db: asyncpg.Pool, as_role: asyncpg.Pool, make: Factory) -> None:
    service = await new_service(db)
    space = await make.space()
    user = await make.member(space, "owner")
    installation = uuid.uuid4()
    credentials = sealed("service_installations", installation, "credentials",
                         {"client_id": "c", "client_secret": CREDENTIAL})
    async with caller(as_role, space=space, user=user, request_id="req-install") as conn:
        await conn.execute("INSERT INTO service_installations (id, service_id, space_id, installed_by, credentials) "
                           "VALUES ($1, $2, $3, $4, $5)", installation, service, space, user, credentials)
        route = await conn.fetchval(
            "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url) "
            "VALUES ($1, $2, '/r', 'GET', 'https://u.example/r') RETURNING id", service, installation)
    async with caller(as_role, space=space, user=user, request_id="req-patch") as conn:
        await conn.execute("UPDATE service_installations SET config = '{\"tier\": \"gold\"}', status = 'inactive' "
                           "WHERE id = $1", installation)
    async with caller(as_role, space=space, user=user, request_id="req-delete") as conn:
        await conn.execute("DELETE FROM service_api_routes WHERE id = $1", route)

    rows = await audit_rows(db, space_id=space)
    assert [(r["table_name"], r["action"], r["request_id"]) for r in rows] == [
        ("service_installations", "insert", "req-install"),
        ("service_api_routes", "insert", "req-install"),
        ("service_installations", "update", "req-patch"),
        ("service_api_routes", "delete", "req-delete"),
    ]
    assert all(r["actor_user_id"] == user and r["actor_api_key_id"] is None for r in rows)
    inserted, route_in, updated, route_out = rows
    assert inserted["row_id"] == installation and inserted["old_values"] is None
    assert inserted["new_values"]["credentials"] == ["client_id", "client_secret"]  # names only
    assert inserted["new_values"]["space_id"] == str(space)
    assert "updated_at" not in inserted["new_values"]  # bookkeeping is not recorded
    assert updated["changed_fields"] == ["config", "status"]
    assert updated["old_values"]["status"] == "active" and updated["new_values"]["status"] == "inactive"
    assert updated["new_values"]["config"] == {"tier": "gold"}
    assert route_in["row_id"] == route and route_out["row_id"] == route
    assert route_out["new_values"] is None and route_out["old_values"]["route_path"] == "/r"
    assert CREDENTIAL not in json.dumps([r["old_values"] for r in rows] + [r["new_values"] for r in rows])


async def test_an_api_key_is_the_actor_when_it_made_the_change(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                                make: Factory) -> None:
    space = await make.space()
    key = await db.fetchval("INSERT INTO api_keys (space_id, name, role, prefix, key_hash) "
                            "VALUES ($1, 'bot', 'admin', 'pgw_x', $2) RETURNING id", space, os.urandom(32))
    async with caller(as_role, space=space, api_key=key, request_id="by-key") as conn:
        instance = await conn.fetchval("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                       "VALUES ($1, 'vm', 'vm', 'h') RETURNING id", space)
    [row] = await audit_rows(db, row_id=instance)
    assert row["actor_api_key_id"] == key and row["actor_user_id"] is None and row["request_id"] == "by-key"
    assert row["space_id"] == space


async def test_every_table_and_kind_of_change_lands_in_the_right_chain(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                                      make: Factory) -> None:
    """Each of the nine tables: insert, update, delete, each once, filed under the row's space (found
    through its parents) or, for marketplace rows, under NULL."""
    vendor = await make.user()
    space = await make.space()
    admin = dict(admin=True, user=vendor)
    async with caller(as_role, **admin) as conn:  # type: ignore[arg-type]
        service = await conn.fetchval(
            "INSERT INTO service_registry (name, slug, version, provider, status) VALUES ('M', $1, '1', 'v', "
            "'approved') RETURNING id", f"m-{uuid.uuid4().hex[:8]}")
        await conn.execute("INSERT INTO service_maintainers (service_id, user_id) VALUES ($1, $2)", service, vendor)
        service_route = await conn.fetchval(
            "INSERT INTO service_api_routes (service_id, route_path, method, target_url) "
            "VALUES ($1, '/all', 'GET', 'https://u.example/all') RETURNING id", service)
        service_component = await conn.fetchval(
            "INSERT INTO service_ui_components (service_id, component_name) VALUES ($1, 'all') RETURNING id", service)
    async with caller(as_role, space=space, user=vendor) as conn:
        installation = await conn.fetchval(
            "INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2) RETURNING id", service, space)
        route = await conn.fetchval(
            "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url) "
            "VALUES ($1, $2, '/mine', 'GET', 'https://u.example/mine') RETURNING id", service, installation)
        component = await conn.fetchval(
            "INSERT INTO service_ui_components (service_id, installation_id, component_name) "
            "VALUES ($1, $2, 'mine') RETURNING id", service, installation)
        key = await conn.fetchval("INSERT INTO api_keys (space_id, name, role, prefix, key_hash) "
                                  "VALUES ($1, 'k', 'member', 'p', $2) RETURNING id", space, os.urandom(32))
        instance = await conn.fetchval("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                       "VALUES ($1, 'vm', 'vm', 'h') RETURNING id", space)
        instance_service = await conn.fetchval(
            "INSERT INTO instance_services (instance_id, name, type) VALUES ($1, 'db', 'database') RETURNING id",
            instance)
        assignment = await conn.fetchval(
            "INSERT INTO service_management_assignments (instance_service_id, plugin_id) VALUES ($1, $2) "
            "RETURNING id", instance_service, service)
    updates = [  # (table, id, change, the space its audit rows belong to)
        ("service_registry", service, "description = 'changed'", None),
        ("service_api_routes", service_route, "target_url = 'https://u.example/x'", None),
        ("service_ui_components", service_component, "component_type = 'widget'", None),
        ("service_installations", installation, "status = 'inactive'", space),
        ("service_api_routes", route, "method = 'POST'", space),
        ("service_ui_components", component, "placement = 'sidebar'", space),
        ("api_keys", key, "name = 'renamed'", space),
        ("infrastructure_instances", instance, "host = 'h2'", space),
        ("instance_services", instance_service, "status = 'running'", space),
        ("service_management_assignments", assignment, "is_active = false", space),
    ]
    for table, row_id, change, row_space in updates:
        async with caller(as_role, space=row_space, admin=row_space is None, user=vendor) as conn:
            assert await conn.execute(f"UPDATE {table} SET {change} WHERE id = $1", row_id) == "UPDATE 1"
    # Deletes, children first (a cascade is tested on its own).
    for table, row_id, row_space in [
            ("service_management_assignments", assignment, space), ("instance_services", instance_service, space),
            ("infrastructure_instances", instance, space), ("api_keys", key, space),
            ("service_ui_components", component, space), ("service_api_routes", route, space),
            ("service_installations", installation, space), ("service_ui_components", service_component, None),
            ("service_api_routes", service_route, None)]:
        async with caller(as_role, space=row_space, admin=row_space is None, user=vendor) as conn:
            assert await conn.execute(f"DELETE FROM {table} WHERE id = $1", row_id) == "DELETE 1"
    async with caller(as_role, admin=True, user=vendor) as conn:
        await conn.execute("DELETE FROM service_maintainers WHERE service_id = $1", service)
        await conn.execute("DELETE FROM service_registry WHERE id = $1", service)

    recorded: dict[tuple[str, UUID], list[tuple[str, UUID | None]]] = {}
    for row in await db.fetch("SELECT table_name, row_id, action, space_id FROM audit_log "
                              "WHERE row_id = ANY($1::uuid[]) ORDER BY id",
                              [service, service_route, service_component, installation, route, component, key,
                               instance, instance_service, assignment]):
        recorded.setdefault((row["table_name"], row["row_id"]), []).append((row["action"], row["space_id"]))
    expected = {(table, row_id): row_space for table, row_id, _, row_space in updates}
    for (table, row_id), row_space in expected.items():
        assert recorded[(table, row_id)] == [("insert", row_space), ("update", row_space), ("delete", row_space)], table
    # Maintainers: row_id is the service's; marketplace rows.
    assert recorded[("service_maintainers", service)] == [("insert", None), ("delete", None)]


async def test_secrets_are_reduced_to_their_names(db: asyncpg.Pool, as_role: asyncpg.Pool, make: Factory) -> None:
    service = await new_service(db)
    space = await make.space()
    instance, assignment_id = uuid.uuid4(), uuid.uuid4()
    connection_config = {"username": "deploy", "secrets": sealed(
        "infrastructure_instances", instance, "connection_config.secrets", {"password": CREDENTIAL})}
    key_hash = os.urandom(32)
    async with caller(as_role, space=space) as conn:
        await conn.execute("INSERT INTO infrastructure_instances (id, space_id, name, type, host, connection_config) "
                           "VALUES ($1, $2, 'vm', 'vm', 'h', $3)", instance, space, connection_config)
        instance_service = await conn.fetchval(
            "INSERT INTO instance_services (instance_id, name, type) VALUES ($1, 'db', 'database') RETURNING id",
            instance)
        await conn.execute(
            "INSERT INTO service_management_assignments (id, instance_service_id, plugin_id, credentials) "
            "VALUES ($1, $2, $3, $4)", assignment_id, instance_service, service,
            sealed("service_management_assignments", assignment_id, "credentials", {"token": CREDENTIAL}))
        key = await conn.fetchval("INSERT INTO api_keys (space_id, name, role, prefix, key_hash) "
                                  "VALUES ($1, 'k', 'member', 'p', $2) RETURNING id", space, key_hash)
        # Credentials the host platform wrote unsealed: their names are kept, never their values.
        plain = await conn.fetchval("INSERT INTO service_installations (service_id, space_id, credentials) "
                                    "VALUES ($1, $2, $3) RETURNING id", service, space, {"api_key": CREDENTIAL})
        # Re-sealing the same names (rotate-keys, a new password) is a change of credentials.
        await conn.execute("UPDATE service_management_assignments SET credentials = $2 WHERE id = $1", assignment_id,
                           sealed("service_management_assignments", assignment_id, "credentials", {"token": "new"}))
    values = {r["table_name"] + ":" + r["action"]: r for r in await audit_rows(db, space_id=space)}
    assert values["infrastructure_instances:insert"]["new_values"]["connection_config"] == {
        "username": "deploy", "secrets": ["password"]}
    assert values["service_management_assignments:insert"]["new_values"]["credentials"] == ["token"]
    assert values["api_keys:insert"]["new_values"]["key_hash"] == "[set]"
    assert values["service_installations:insert"]["new_values"]["credentials"] == ["api_key"]
    resealed = values["service_management_assignments:update"]
    assert resealed["changed_fields"] == ["credentials"]
    assert resealed["old_values"]["credentials"] == resealed["new_values"]["credentials"] == ["token"]
    everything = await db.fetchval("SELECT string_agg(concat(old_values::text, new_values::text), '') "
                                   "FROM audit_log WHERE space_id = $1", space)
    assert CREDENTIAL not in everything
    assert key_hash.hex() not in everything
    for envelope_field in ('"ct"', '"nonce"', '"kid"'):
        assert envelope_field not in everything
    assert plain and key


async def test_bookkeeping_writes_no_audit_row_and_keeps_updated_at(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                                     make: Factory) -> None:
    service = await new_service(db)
    space = await make.space()
    async with caller(as_role, space=space) as conn:
        installation = await conn.fetchval(
            "INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2) RETURNING id", service, space)
        key = await conn.fetchval("INSERT INTO api_keys (space_id, name, role, prefix, key_hash) "
                                  "VALUES ($1, 'k', 'member', 'p', $2) RETURNING id", space, os.urandom(32))
        instance = await conn.fetchval("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                       "VALUES ($1, 'vm', 'vm', 'h') RETURNING id", space)
        instance_service = await conn.fetchval(
            "INSERT INTO instance_services (instance_id, name, type) VALUES ($1, 'db', 'database') RETURNING id",
            instance)
        assignment = await conn.fetchval(
            "INSERT INTO service_management_assignments (instance_service_id, plugin_id) VALUES ($1, $2) "
            "RETURNING id", instance_service, service)
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    stamps = {
        "service_installations": await db.fetchval("SELECT updated_at FROM service_installations WHERE id = $1",
                                                   installation),
        "service_registry": await db.fetchval("SELECT updated_at FROM service_registry WHERE id = $1", service),
        "infrastructure_instances": await db.fetchval(
            "SELECT updated_at FROM infrastructure_instances WHERE id = $1", instance),
        "instance_services": await db.fetchval("SELECT updated_at FROM instance_services WHERE id = $1",
                                               instance_service),
    }
    await asyncio.sleep(0.01)  # a moved updated_at would differ
    # The gateway's own bookkeeping paths (definer functions), and plain updates of the same columns.
    async with as_role.acquire() as conn:
        await conn.execute("SELECT gateway_touch_api_keys($1::uuid[], now())", [key])
        await conn.execute("SELECT gateway_record_health($1::uuid[], $2::text[], now())", [installation], ["healthy"])
        await conn.execute("SELECT gateway_touch_assignments($1::uuid[], now())", [assignment])
    async with caller(as_role, space=space) as conn:
        await conn.execute("UPDATE infrastructure_instances SET last_health_check = now(), "
                           "health_status = '{\"ok\": true}' WHERE id = $1", instance)
        await conn.execute("UPDATE service_installations SET updated_at = now() WHERE id = $1", installation)
        await conn.execute("UPDATE service_installations SET status = status WHERE id = $1", installation)  # no change
    await db.execute("UPDATE service_registry SET installation_count = installation_count + 1 WHERE id = $1", service)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before
    assert await db.fetchval("SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1", key)
    assert await db.fetchval("SELECT health_status FROM service_installations WHERE id = $1", installation) == "healthy"
    for table, stamp in stamps.items():
        row = service if table == "service_registry" else {
            "service_installations": installation, "infrastructure_instances": instance,
            "instance_services": instance_service}[table]
        assert await db.fetchval(f"SELECT updated_at FROM {table} WHERE id = $1", row) == stamp, table
    # A real change next to bookkeeping is recorded, without the bookkeeping column.
    async with caller(as_role, space=space) as conn:
        await conn.execute("UPDATE service_installations SET status = 'error', health_status = 'unhealthy' "
                           "WHERE id = $1", installation)
    [row] = await audit_rows(db, row_id=installation, action="update")
    assert row["changed_fields"] == ["status"] and "health_status" not in row["new_values"]
    assert await db.fetchval("SELECT updated_at FROM service_installations WHERE id = $1", installation) \
        > stamps["service_installations"]


async def test_installing_counts_without_an_audit_row_for_the_service(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                                        make: Factory) -> None:
    service = await new_service(db)
    space = await make.space()
    async with caller(as_role, space=space) as conn:
        await conn.execute("INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2)", service, space)
    assert await db.fetchval("SELECT installation_count FROM service_registry WHERE id = $1", service) == 1
    assert [r["action"] for r in await audit_rows(db, row_id=service)] == ["insert"]  # its creation only


AUDITED = ("service_registry", "service_api_routes", "service_ui_components", "service_installations", "api_keys",
           "service_maintainers", "infrastructure_instances", "instance_services", "service_management_assignments")
BOOKKEEPING = ("updated_at", "installation_count", "last_used", "last_used_at", "last_health_check", "health_status")


async def test_the_update_triggers_compare_every_column_but_bookkeeping(db: asyncpg.Pool) -> None:
    """Migration 1400 lists the columns in each update trigger's WHEN clause: a migration that adds a
    column to an audited table without public.audit_create_update_trigger(table) fails here (an
    update of only that column would go unrecorded)."""
    for table in AUDITED:
        columns = {r["attname"] for r in await db.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
            f"public.{table}")}
        definition = await db.fetchval(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = $1::regclass AND t.tgname = $2",
            f"public.{table}", f"trg_{table}_audit_update")
        assert definition is not None, table
        when = definition.split(" WHEN ", 1)[1].lower()
        for column in columns:
            listed = f"old.{column} is distinct from new.{column}" in when \
                or f"(old.{column})::text is distinct from (new.{column})::text" in when
            assert listed == (column not in BOOKKEEPING), (table, column, definition)


async def test_a_rolled_back_change_leaves_no_audit_row(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                         make: Factory) -> None:
    space = await make.space()
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    heads = await db.fetch("SELECT * FROM audit_chain_heads ORDER BY chain")
    with pytest.raises(RuntimeError):
        async with caller(as_role, space=space) as conn:
            await conn.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                               "VALUES ($1, 'vm', 'vm', 'h')", space)
            assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE space_id = $1", space) == 1
            raise RuntimeError("roll back")
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before
    assert await db.fetch("SELECT * FROM audit_chain_heads ORDER BY chain") == heads


async def test_a_cascade_files_the_children_under_their_space(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                              make: Factory) -> None:
    """Deleting a parent deletes its children by cascade: by the time their triggers run the parent
    is gone, yet their rows still go to the space's chain, never the marketplace's."""
    service = await new_service(db)
    space = await make.space()
    async with caller(as_role, space=space) as conn:
        installation = await conn.fetchval(
            "INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2) RETURNING id", service, space)
        route = await conn.fetchval(
            "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url) "
            "VALUES ($1, $2, '/c', 'GET', 'https://u.example/c') RETURNING id", service, installation)
        instance = await conn.fetchval("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                       "VALUES ($1, 'vm', 'vm', 'h') RETURNING id", space)
        instance_service = await conn.fetchval(
            "INSERT INTO instance_services (instance_id, name, type) VALUES ($1, 'db', 'database') RETURNING id",
            instance)
        assignment = await conn.fetchval(
            "INSERT INTO service_management_assignments (instance_service_id, plugin_id) VALUES ($1, $2) "
            "RETURNING id", instance_service, service)
        await conn.execute("DELETE FROM service_installations WHERE id = $1", installation)
        await conn.execute("DELETE FROM infrastructure_instances WHERE id = $1", instance)
    for row_id in (installation, route, instance, instance_service, assignment):
        deleted = await audit_rows(db, row_id=row_id, action="delete")
        assert [r["space_id"] for r in deleted] == [space], row_id


async def test_the_database_keeps_a_space_s_audit_rows_inside_it(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                                 make: Factory) -> None:
    a, b = await make.space(), await make.space()
    await new_service(db)  # a marketplace row
    for space in (a, b):
        async with caller(as_role, space=space) as conn:
            await conn.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                               "VALUES ($1, 'vm', 'vm', 'h')", space)
    everything = "SELECT DISTINCT space_id FROM audit_log"  # no filter: the policies keep the space
    async with caller(as_role) as conn:
        assert await conn.fetch(everything) == []
    async with caller(as_role, space=a) as conn:
        assert [r["space_id"] for r in await conn.fetch(everything)] == [a]
    async with caller(as_role, admin=True) as conn:
        seen = {r["space_id"] for r in await conn.fetch(everything)}
        assert {a, b, None} <= seen
    # The API's role reads; it does not write audit rows itself, nor change them.
    async with caller(as_role, space=a) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO audit_log (action, table_name, changed_fields, prev_hash, hash) "
                    "VALUES ('insert', 'api_keys', '{}', $1, $1)", ZERO)
        for statement in ("UPDATE audit_log SET action = 'delete'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log", "UPDATE audit_chain_heads SET last_id = 0",
                          "DELETE FROM audit_chain_heads"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.fetch("SELECT * FROM audit_verify()")


async def test_rows_are_append_only_even_for_a_superuser(db: asyncpg.Pool, make: Factory) -> None:
    space = await make.space()
    await db.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) VALUES ($1, 'vm', 'vm', 'h')",
                     space)
    assert await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    for statement in ("UPDATE audit_log SET request_id = 'forged'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log", "UPDATE audit_chain_heads SET last_id = 0",
                      "DELETE FROM audit_chain_heads", "TRUNCATE audit_chain_heads"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused"):
            await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE space_id = $1", space) == 1


async def test_row_security_is_forced_on_the_audit_tables(db: asyncpg.Pool) -> None:
    found = await db.fetch("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                           "WHERE relnamespace = 'public'::regnamespace AND relname IN ('audit_log', 'audit_chain_heads')")
    assert len(found) == 2 and all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in found)
    definers = await db.fetch(
        "SELECT p.proname, pg_get_userbyid(p.proowner) AS owner, p.prosecdef, p.proconfig FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace AND p.proname IN "
        "('audit_record', 'audit_append', 'audit_parent_space', 'audit_keep_parent_space', 'audit_move_head', "
        "'audit_verify')")
    assert len(definers) == 6
    for f in definers:
        assert f["owner"] == "gateway_auditor" and f["prosecdef"], f["proname"]
        assert any(c.startswith("search_path=pg_catalog, public") for c in f["proconfig"]), f["proname"]
    auditor = await db.fetchrow("SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles "
                                "WHERE rolname = 'gateway_auditor'")
    assert not (auditor["rolcanlogin"] or auditor["rolsuper"] or auditor["rolbypassrls"])
    # The contract's grants: the app role may insert and read, never update or delete (and its own
    # inserts are refused by row-level security: only the triggers, as gateway_auditor, write).
    for privilege, granted in (("SELECT", True), ("INSERT", True), ("UPDATE", False), ("DELETE", False),
                               ("TRUNCATE", False)):
        assert await db.fetchval("SELECT has_table_privilege($1, 'public.audit_log', $2)", ROLE, privilege) \
            is granted, privilege


async def test_chains_stay_consistent_under_concurrent_writers(db: asyncpg.Pool, as_role: asyncpg.Pool,
                                                               make: Factory) -> None:
    """10 transactions at once over 2 spaces (and the marketplace), each writing several rows with
    pauses in between so that they interleave; then every chain verifies, and ids increase along
    each chain in the order the writers took turns."""
    spaces = [await make.space(), await make.space()]
    service = await new_service(db)
    rng = random.Random(10)

    async def writer(n: int) -> None:
        space = spaces[n % 2]
        async with caller(as_role, space=space, request_id=f"writer-{n}") as conn:
            for i in range(5):
                await conn.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                                   "VALUES ($1, $2, 'vm', 'h')", space, f"w{n}-{i}")
                await asyncio.sleep(rng.random() / 100)
        if n % 5 == 0:
            async with caller(as_role, admin=True, request_id=f"writer-{n}") as conn:
                await conn.execute("UPDATE service_registry SET description = $2 WHERE id = $1", service, f"by {n}")

    await asyncio.gather(*(writer(n) for n in range(10)))
    async with db.acquire() as conn:
        verdict = await audit.verify(conn)
    assert verdict.ok, verdict
    for space in spaces:
        rows = await audit_rows(db, space_id=space)
        assert len(rows) == 25
        # Writers took turns per chain: each writer's rows are consecutive in its chain.
        order = [r["request_id"] for r in rows]
        assert all(order.count(w) == 5 for w in set(order))
        runs = [w for i, w in enumerate(order) if i == 0 or order[i - 1] != w]
        assert len(runs) == 5, order
        assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
        assert rows[0]["prev_hash"] == ZERO
        head = await db.fetchrow("SELECT last_id, last_hash FROM audit_chain_heads WHERE chain = $1", str(space))
        assert (head["last_id"], head["last_hash"]) == (rows[-1]["id"], rows[-1]["hash"])


async def test_a_repeatable_read_writer_cannot_fork_a_chain(db: asyncpg.Pool, database_url: str,
                                                            make: Factory) -> None:
    """A snapshot taken before another writer's commit misses that writer's rows: linking to the
    chain's end as it saw it would fork the chain. Its commit fails instead (could not serialize)."""
    space = await make.space()
    insert = "INSERT INTO infrastructure_instances (space_id, name, type, host) VALUES ($1, 'vm', 'vm', 'h')"
    await db.execute(insert, space)  # the chain exists
    late = await asyncpg.connect(database_url)
    try:
        transaction = late.transaction(isolation="repeatable_read")
        await transaction.start()
        await late.fetchval("SELECT count(*) FROM spaces")  # the snapshot
        await db.execute(insert, space)  # another writer of the chain commits meanwhile
        await late.execute(insert, space)
        with pytest.raises(asyncpg.SerializationError):
            await transaction.commit()
    finally:
        await late.close()
    async with db.acquire() as conn:
        verdict = await audit.verify(conn, space_id=space)
    assert verdict.ok and verdict.checked == 2, verdict


async def test_the_hash_is_the_database_s_and_independent_of_session_settings(db: asyncpg.Pool,
                                                                               as_role: asyncpg.Pool,
                                                                               make: Factory) -> None:
    space = await make.space()
    async with caller(as_role, space=space) as conn:
        await conn.execute("SET LOCAL TimeZone = 'Asia/Kathmandu'")
        await conn.execute("SET LOCAL DateStyle = 'SQL, DMY'")
        await conn.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                           "VALUES ($1, 'vm', 'vm', 'h')", space)
    async with db.acquire() as conn:
        await conn.execute("SET TimeZone = 'America/Los_Angeles'")
        verdict = await audit.verify(conn, space_id=space)
        await conn.execute("RESET TimeZone")
    assert verdict.ok and verdict.checked == 1 and verdict.chains == 1
    [row] = await audit_rows(db, space_id=space)
    assert row["prev_hash"] == ZERO and row["hash"] == await db.fetchval(
        "SELECT audit_row_hash(a) FROM audit_log a WHERE id = $1", row["id"])


# --- tampering: each test on a database of its own ---------------------------------------------


@pytest.fixture
async def tamper_db(postgres_server: str, template_database: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    name = await create_database(postgres_server, template_database)
    dsn = str(URL(postgres_server).with_path("/" + name))
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        yield dsn, pool
    finally:
        await pool.close()
        await drop_database(postgres_server, name)


async def _history(pool: asyncpg.Pool) -> tuple[UUID, UUID, list[int]]:
    """Two spaces with five instances each, and a service: three chains. The ids of space a's rows."""
    a = await pool.fetchval("INSERT INTO spaces (name) VALUES ('a') RETURNING id")
    b = await pool.fetchval("INSERT INTO spaces (name) VALUES ('b') RETURNING id")
    await new_service(pool)
    for i in range(5):
        for space in (a, b):
            await pool.execute("INSERT INTO infrastructure_instances (space_id, name, type, host) "
                               "VALUES ($1, $2, 'vm', 'h')", space, f"i{i}")
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM audit_log WHERE space_id = $1 ORDER BY id", a)]
    return a, b, ids


async def cli_verify(dsn: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "audit", "verify", *args, cwd=ROOT,
        env={**env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "GATEWAY_MIGRATE_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def _tamper(pool: asyncpg.Pool, statement: str, *args: Any) -> None:
    """What a superuser can do: switch the guard off, change rows, switch it on again."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER trg_audit_log_append_only")
        await conn.execute(statement, *args)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER trg_audit_log_append_only")


async def test_verify_passes_then_names_the_row_whose_content_was_changed(tamper_db: tuple[str, asyncpg.Pool]) -> None:
    dsn, pool = tamper_db
    a, b, ids = await _history(pool)
    code, out = await cli_verify(dsn)
    assert code == 0, out
    assert "11 rows checked in 3 chains" in out
    code, out = await cli_verify(dsn, "--space", str(a))
    assert code == 0 and "5 rows checked in 1 chains" in out, out

    await _tamper(pool, "UPDATE audit_log SET new_values = new_values || '{\"host\": \"evil\"}' WHERE id = $1", ids[2])
    code, out = await cli_verify(dsn)
    assert code == 1, out
    assert f"row {ids[2]}: its hash does not match its content" in out
    code, out = await cli_verify(dsn, "--space", str(b))  # the other space's chain is intact
    assert code == 0, out


async def test_verify_names_the_link_after_a_row_rewritten_with_its_hash(tamper_db: tuple[str, asyncpg.Pool]) -> None:
    dsn, pool = tamper_db
    a, _, ids = await _history(pool)
    # Rewritten and re-hashed: the row itself matches, the next row's link does not.
    await _tamper(pool, "UPDATE audit_log SET request_id = 'forged' WHERE id = $1", ids[1])
    await _tamper(pool, "UPDATE audit_log a SET hash = audit_row_hash(a) WHERE id = $1", ids[1])
    code, out = await cli_verify(dsn, "--space", str(a))
    assert code == 1 and f"row {ids[2]}: its prev_hash is not the hash of the row before it" in out, out


async def test_verify_names_a_row_removed_from_the_middle_or_the_end(tamper_db: tuple[str, asyncpg.Pool]) -> None:
    dsn, pool = tamper_db
    a, _, ids = await _history(pool)
    await _tamper(pool, "DELETE FROM audit_log WHERE id = $1", ids[-1])  # the tail: every link still holds
    code, out = await cli_verify(dsn)
    assert code == 1, out
    assert f"row {ids[-1]}: missing, chain {a} ends at row {ids[-2]}" in out
    await _tamper(pool, "DELETE FROM audit_log WHERE id = $1", ids[0])  # the first row: the new first links to it
    code, out = await cli_verify(dsn)
    assert code == 1 and f"row {ids[1]}: its prev_hash" in out, out


async def test_verify_works_for_an_owner_login_that_is_no_superuser(tamper_db: tuple[str, asyncpg.Pool]) -> None:
    """Production: the migrating login owns the tables, is no superuser and is held by forced
    row-level security; it is a member of gateway_auditor (db/roles.py), whose function reads."""
    dsn, pool = tamper_db
    await _history(pool)
    login = f"pgw_owner_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE ROLE {login} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE gateway_auditor")
    try:
        owner_dsn = str(URL(dsn).with_user(login))
        code, out = await cli_verify(owner_dsn)
        assert code == 0 and "11 rows checked in 3 chains" in out, out
    finally:
        await pool.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'")
        await pool.execute(f"DROP ROLE {login}")


async def test_verify_refuses_a_login_that_may_not(tamper_db: tuple[str, asyncpg.Pool]) -> None:
    dsn, pool = tamper_db
    login = f"pgw_nobody_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE ROLE {login} LOGIN")
    try:
        code, out = await cli_verify(str(URL(dsn).with_user(login)))
        assert code == 2 and "may not verify" in out, out
    finally:
        await pool.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'")
        await pool.execute(f"DROP ROLE {login}")
