"""Row-level security (contract revision 3, "Database roles and row-level security"), checked as
the role the gateway runs its queries as, table by table: unset → nothing; space A → only A;
writes into B refused; a platform-admin transaction sees all. Rows are arranged as the superuser
(the `db` fixture), which row-level security does not hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import pytest

from db.pool import ROLE_RETRY_SECONDS, Database, create_pool
from db.roles import UnsafeRole, check_identity
from tests.factories import Factory

ROLE = "gateway_app"


@dataclass
class Space:
    id: UUID
    installation: UUID
    route: UUID
    component: UUID
    api_key: UUID
    instance: UUID
    instance_service: UUID
    assignment: UUID


@dataclass
class World:
    service: UUID
    service_route: UUID
    service_component: UUID
    a: Space
    b: Space


async def _space(db: asyncpg.Pool, make: Factory, service: UUID) -> Space:
    space = await make.space()
    installation = await db.fetchval(
        "INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2) RETURNING id", service, space)
    route = await db.fetchval(
        "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url) "
        "VALUES ($1, $2, '/mine', 'GET', '/mine') RETURNING id", service, installation)
    component = await db.fetchval(
        "INSERT INTO service_ui_components (service_id, installation_id, component_name) "
        "VALUES ($1, $2, 'mine') RETURNING id", service, installation)
    api_key = await db.fetchval(
        "INSERT INTO api_keys (space_id, name, role, prefix, key_hash) VALUES ($1, 'k', 'member', $2, $3) RETURNING id",
        space, uuid.uuid4().hex[:8], uuid.uuid4().bytes)
    instance = await db.fetchval(
        "INSERT INTO infrastructure_instances (space_id, name, type, host) VALUES ($1, 'vm', 'vm', 'h') RETURNING id",
        space)
    instance_service = await db.fetchval(
        "INSERT INTO instance_services (instance_id, name, type) VALUES ($1, 'db', 'database') RETURNING id", instance)
    assignment = await db.fetchval(
        "INSERT INTO service_management_assignments (instance_service_id, plugin_id) VALUES ($1, $2) RETURNING id",
        instance_service, service)
    return Space(space, installation, route, component, api_key, instance, instance_service, assignment)


@pytest.fixture(scope="module")
async def world(db: asyncpg.Pool, make: Factory) -> World:
    service = await db.fetchval(
        "INSERT INTO service_registry (name, slug, version, provider, status) "
        "VALUES ('RLS', $1, '1', 'v', 'approved') RETURNING id", f"rls-{uuid.uuid4().hex[:8]}")
    service_route = await db.fetchval(
        "INSERT INTO service_api_routes (service_id, route_path, method, target_url) "
        "VALUES ($1, '/all', 'GET', '/all') RETURNING id", service)
    service_component = await db.fetchval(
        "INSERT INTO service_ui_components (service_id, component_name) VALUES ($1, 'all') RETURNING id", service)
    return World(service, service_route, service_component,
                 await _space(db, make, service), await _space(db, make, service))


@pytest.fixture(scope="module")
async def as_role(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The pool the gateway's queries run through: logged in as the test's (superuser) login,
    every query as the app role."""
    pool = await create_pool(database_url, min_size=1, max_size=2, role=ROLE)
    yield pool
    await pool.close()


async def rows(pool: asyncpg.Pool, query: str, *, space: UUID | None = None, admin: bool = False,
               user: UUID | None = None) -> list[asyncpg.Record]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.space_id', $1, true), set_config('app.platform_admin', $2, true), "
                           "set_config('app.user_id', $3, true)",
                           str(space or ""), "on" if admin else "off", str(user or ""))
        return await conn.fetch(query)


# (table, the Space attribute holding that space's row)
SPACE_SCOPED = [
    ("service_installations", "installation"),
    ("service_api_routes", "route"),
    ("service_ui_components", "component"),
    ("api_keys", "api_key"),
    ("infrastructure_instances", "instance"),
    ("instance_services", "instance_service"),
    ("service_management_assignments", "assignment"),
]


def ids_of(records: list[asyncpg.Record]) -> set[UUID]:
    return {r["id"] for r in records}


@pytest.mark.parametrize(("table", "attribute"), SPACE_SCOPED)
async def test_space_rows_are_seen_only_inside_their_space(as_role: asyncpg.Pool, world: World,
                                                           table: str, attribute: str) -> None:
    a, b = getattr(world.a, attribute), getattr(world.b, attribute)
    query = f"SELECT id FROM public.{table}"  # no filter at all: the database keeps the space
    unset = ids_of(await rows(as_role, query))
    assert a not in unset and b not in unset
    in_a = ids_of(await rows(as_role, query, space=world.a.id))
    assert a in in_a and b not in in_a
    in_b = ids_of(await rows(as_role, query, space=world.b.id))
    assert b in in_b and a not in in_b
    everything = ids_of(await rows(as_role, query, admin=True))
    assert {a, b} <= everything


def test_every_table_of_the_gateway_is_covered() -> None:
    covered = {t for t, _ in SPACE_SCOPED} | {"service_registry", "service_maintainers"}
    from db.roles import READ_WRITE
    assert covered == set(READ_WRITE)


async def test_row_security_is_enabled_and_forced_on_every_gateway_table(db: asyncpg.Pool) -> None:
    from db.roles import READ_WRITE
    found = await db.fetch("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                           "WHERE relnamespace = 'public'::regnamespace AND relname = ANY($1::text[])", list(READ_WRITE))
    assert {r["relname"] for r in found} == set(READ_WRITE)
    assert all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in found), found
    host = await db.fetch("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                          "AND relname IN ('users', 'spaces', 'space_members') AND relrowsecurity")
    assert host == []  # the host platform's tables are the host's


async def test_service_wide_rows_are_marketplace_rows(as_role: asyncpg.Pool, world: World) -> None:
    for space in (None, world.a.id):
        assert world.service_route in ids_of(await rows(as_role, "SELECT id FROM service_api_routes", space=space))
        assert world.service_component in ids_of(await rows(as_role, "SELECT id FROM service_ui_components", space=space))
        assert world.service in ids_of(await rows(as_role, "SELECT id FROM service_registry", space=space))


WRITES_INTO_B = [
    ("installation", "INSERT INTO service_installations (service_id, space_id) VALUES ('{service}', '{b}')"),
    ("api key", "INSERT INTO api_keys (space_id, name, role, prefix, key_hash) VALUES ('{b}', 'x', 'member', 'px', '\\x00')"),
    ("instance", "INSERT INTO infrastructure_instances (space_id, name, type, host) VALUES ('{b}', 'x', 'vm', 'h')"),
    ("instance service", "INSERT INTO instance_services (instance_id, name, type) VALUES ('{b_instance}', 'x', 'db')"),
    ("assignment", "INSERT INTO service_management_assignments (instance_service_id, plugin_id) "
                   "VALUES ('{b_instance_service}', '{service}')"),
    ("installation route", "INSERT INTO service_api_routes (service_id, installation_id, route_path, method, target_url) "
                           "VALUES ('{service}', '{b_installation}', '/x', 'GET', '/x')"),
    ("moving A's instance to B", "UPDATE infrastructure_instances SET space_id = '{b}' WHERE id = '{a_instance}'"),
]


@pytest.mark.parametrize(("what", "statement"), WRITES_INTO_B, ids=[w for w, _ in WRITES_INTO_B])
async def test_writes_into_another_space_are_refused(as_role: asyncpg.Pool, world: World, what: str,
                                                     statement: str) -> None:
    sql = statement.format(service=world.service, b=world.b.id, b_instance=world.b.instance,
                           b_instance_service=world.b.instance_service, b_installation=world.b.installation,
                           a_instance=world.a.instance)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await rows(as_role, sql, space=world.a.id)


async def test_updates_and_deletes_of_another_spaces_rows_touch_nothing(as_role: asyncpg.Pool, world: World,
                                                                        db: asyncpg.Pool) -> None:
    async with as_role.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.space_id', $1, true)", str(world.a.id))
        assert await conn.execute("UPDATE infrastructure_instances SET name = 'taken' WHERE id = $1",
                                  world.b.instance) == "UPDATE 0"
        assert await conn.execute("DELETE FROM api_keys WHERE id = $1", world.b.api_key) == "DELETE 0"
    assert await db.fetchval("SELECT name FROM infrastructure_instances WHERE id = $1", world.b.instance) == "vm"
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE id = $1", world.b.api_key) == 1


async def test_marketplace_writes_need_a_maintainer_or_an_admin(as_role: asyncpg.Pool, world: World,
                                                                make: Factory, db: asyncpg.Pool) -> None:
    stranger, maintainer = await make.user(), await make.user()
    await db.execute("INSERT INTO service_maintainers (service_id, user_id) VALUES ($1, $2)", world.service, maintainer)
    update = f"UPDATE service_registry SET description = 'x' WHERE id = '{world.service}' RETURNING id"
    assert await rows(as_role, update, user=stranger) == []
    assert ids_of(await rows(as_role, update, user=maintainer)) == {world.service}
    assert ids_of(await rows(as_role, update, admin=True)) == {world.service}
    # A stranger can neither add a service-wide route nor make themselves a maintainer.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await rows(as_role, "INSERT INTO service_api_routes (service_id, route_path, method, target_url) "
                            f"VALUES ('{world.service}', '/evil', 'GET', '/evil')", user=stranger)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await rows(as_role, f"INSERT INTO service_maintainers (service_id, user_id) VALUES ('{world.service}', "
                            f"'{stranger}')", user=stranger)


async def test_the_app_role_cannot_read_or_alter_what_is_not_its_own(as_role: asyncpg.Pool) -> None:
    async with as_role.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == ROLE
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE service_installations DISABLE ROW LEVEL SECURITY")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM schema_migrations")


async def test_a_query_without_its_filter_through_the_apis_own_pool_stays_in_its_space(
        database_url: str, world: World) -> None:
    """The pool and transaction the API uses (db.pool.Database), with the handler's WHERE left
    out on purpose: the database still returns the caller's space only."""
    database = Database(database_url, role=ROLE)
    await database.connect()
    try:
        async with database.transaction(space_id=world.a.id) as conn:
            found = ids_of(await conn.fetch("SELECT id FROM service_installations"))
            secrets = ids_of(await conn.fetch("SELECT id FROM infrastructure_instances"))
        assert world.a.installation in found and world.b.installation not in found
        assert world.a.instance in secrets and world.b.instance not in secrets
    finally:
        await database.close()


async def test_cross_space_paths_go_through_their_definer_functions(as_role: asyncpg.Pool, world: World) -> None:
    """With no space set, the loader and the key cache still see every space, and only what they need."""
    routes = ids_of(await rows(as_role, "SELECT * FROM gateway_live_routes()"))
    assert {world.a.route, world.b.route, world.service_route} <= routes
    installations = ids_of(await rows(as_role, "SELECT * FROM gateway_live_installations()"))
    assert {world.a.installation, world.b.installation} <= installations
    keys = ids_of(await rows(as_role, "SELECT * FROM gateway_live_api_keys()"))
    assert {world.a.api_key, world.b.api_key} <= keys
    # The definer roles are held to their own policies: the reader cannot write.
    async with as_role.acquire() as conn:
        owner = await conn.fetchval("SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'gateway_live_routes'")
        assert owner == "gateway_reader"
        config = await conn.fetchval("SELECT proconfig FROM pg_proc WHERE proname = 'gateway_live_routes'")
        assert any(c.startswith("search_path=") for c in config)


@pytest.mark.parametrize("attribute", ["rolsuper", "rolbypassrls"])
async def test_serve_refuses_a_superuser_or_bypassrls_role(database_url: str, db: asyncpg.Pool, attribute: str) -> None:
    role = f"pgw_unsafe_{uuid.uuid4().hex[:8]}"
    flag = "SUPERUSER" if attribute == "rolsuper" else "BYPASSRLS"
    await db.execute(f"CREATE ROLE {role} NOLOGIN {flag}")
    try:
        database = Database(database_url, role=role)
        await database.connect()
        assert database.pool is None and database.refused and role in database.refused
    finally:
        await db.execute(f"DROP ROLE {role}")


async def test_serve_refuses_the_tables_owner(database_url: str, db: asyncpg.Pool) -> None:
    owner = await db.fetchval("SELECT relowner::regrole::text FROM pg_class WHERE relname = 'service_installations'")
    pool = await create_pool(database_url, min_size=1, max_size=1)  # the test login: a superuser
    try:
        async with pool.acquire() as conn:
            with pytest.raises(UnsafeRole):
                await check_identity(conn, owner)
    finally:
        await pool.close()
    database = Database(database_url, role=ROLE)
    await database.connect()
    try:
        assert database.identity is not None and database.identity.role == ROLE
        assert database.identity.login_privileged  # the test's login is a superuser: warned, allowed
    finally:
        await database.close()


async def test_an_unknown_role_is_refused_with_a_reason_until_it_exists(database_url: str, db: asyncpg.Pool) -> None:
    # The gateway's pods may start before the migration Job has created the role.
    role = f"pgw_later_{uuid.uuid4().hex[:8]}"
    database = Database(database_url, role=role)
    connecting = asyncio.create_task(database.connect(retry_seconds=0.1))
    try:
        for _ in range(100):
            if database.refused:
                break
            await asyncio.sleep(0.05)
        assert database.pool is None and role in (database.refused or "")
        await db.execute(f"CREATE ROLE {role} NOLOGIN")
        await db.execute(f"GRANT gateway_app TO {role}")
        await asyncio.wait_for(connecting, ROLE_RETRY_SECONDS + 5)
        assert database.pool is not None and database.refused is None
    finally:
        connecting.cancel()
        await database.close()
        await db.execute(f"DROP ROLE IF EXISTS {role}")
