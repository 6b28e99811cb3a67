"""The migrated schema equals the seed's, table by table, read back from pg_catalog.

The seed document's own CREATE TABLE / CREATE INDEX statements are executed in one scratch
database, the project's migrations in another, and the catalogs are compared: columns (type,
length, default, nullability), constraints (CHECK, UNIQUE, FOREIGN KEY with ON DELETE) and
indexes. The only differences allowed are listed here, each for a documented reason.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db.migrate import load_migrations, migrate
from tests.conftest import _with_database, create_database, drop_database

SEED = Path(__file__).resolve().parent.parent / "docs" / "seed" / "database-schema.md"
SEED_TABLES = ["service_registry", "service_installations", "service_ui_components", "service_api_routes",
               "infrastructure_instances", "instance_services", "service_management_assignments"]

# Added by the contract, each in a migration of its own.
ADDED_COLUMNS = {("service_registry", "status_reason"), ("service_api_routes", "options")}
ADDED_CONSTRAINTS = {("service_api_routes", "unique_route")}

COLUMNS = """
SELECT table_name, column_name, data_type, character_maximum_length, numeric_precision,
       numeric_scale, column_default, is_nullable, udt_name
FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY($1)
"""
CONSTRAINTS = """
SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c WHERE c.conrelid::regclass::text = ANY($1)
"""
INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1)"


def seed_statements() -> list[str]:
    """CREATE TABLE and CREATE INDEX statements of the seed's table sections."""
    blocks = re.findall(r"```sql\n(.*?)```", SEED.read_text(), re.S)
    statements = []
    for block in blocks:
        if "CREATE TABLE public." not in block:
            continue  # the migration template and the query examples
        statements += [s.strip() for s in block.split(";") if s.strip().startswith("CREATE")]
    return statements


async def snapshot(dsn: str) -> dict[str, set[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "columns": {tuple(r) for r in await conn.fetch(COLUMNS, SEED_TABLES)},
            "constraints": {tuple(r) for r in await conn.fetch(CONSTRAINTS, SEED_TABLES)},
            "indexes": {tuple(r) for r in await conn.fetch(INDEXES, SEED_TABLES)},
        }
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def seed_dsn(postgres_server: str) -> AsyncIterator[str]:
    """A database holding exactly what the seed document writes (on top of the platform tables)."""
    name = await create_database(postgres_server, "template1")
    dsn = _with_database(postgres_server, name)
    conn = await asyncpg.connect(dsn)
    try:
        platform = next(m for m in load_migrations() if m.name == "platform_tables")
        await conn.execute(platform.sql)
        for statement in seed_statements():
            await conn.execute(statement)
    finally:
        await conn.close()
    yield dsn
    await drop_database(postgres_server, name)


@pytest.fixture(scope="module")
async def migrated_dsn(postgres_server: str) -> AsyncIterator[str]:
    name = await create_database(postgres_server, "template1")
    dsn = _with_database(postgres_server, name)
    await migrate(dsn)
    yield dsn
    await drop_database(postgres_server, name)


def test_seed_document_parsed() -> None:
    statements = seed_statements()
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 7
    assert sum(s.startswith("CREATE INDEX") for s in statements) == 18


@pytest.mark.parametrize("table", SEED_TABLES)
async def test_table_matches_seed(table: str, seed_dsn: str, migrated_dsn: str) -> None:
    seed, ours = await snapshot(seed_dsn), await snapshot(migrated_dsn)

    def of(kind: str, snap: dict[str, set[tuple[object, ...]]]) -> set[tuple[object, ...]]:
        return {row for row in snap[kind] if row[0] == table}

    assert of("columns", ours) - {r for r in of("columns", ours) if (r[0], r[1]) in ADDED_COLUMNS} == of("columns", seed)
    assert {r for r in of("constraints", ours) if (r[0], r[1]) not in ADDED_CONSTRAINTS} == of("constraints", seed)
    assert {r for r in of("indexes", ours) if (r[0], r[1]) not in ADDED_CONSTRAINTS} == of("indexes", seed)


async def test_only_the_documented_differences(seed_dsn: str, migrated_dsn: str) -> None:
    seed, ours = await snapshot(seed_dsn), await snapshot(migrated_dsn)
    assert {(r[0], r[1]) for r in ours["columns"] - seed["columns"]} == ADDED_COLUMNS
    assert {(r[0], r[1]) for r in ours["constraints"] - seed["constraints"]} == ADDED_CONSTRAINTS
    assert seed["constraints"] <= ours["constraints"] and seed["indexes"] <= ours["indexes"]
    # The seed declares the slug unique twice; it exists once, as the named `unique_slug`.
    slug_unique = {r[1] for r in ours["constraints"] if r[0] == "service_registry" and r[2] == b"u"}
    assert slug_unique == {"unique_slug"}
    # Every seed table keeps `updated_at` current where it has the column.
    conn = await asyncpg.connect(migrated_dsn)
    try:
        triggers = {r["tgrelid"] for r in await conn.fetch(
            "SELECT tgrelid::regclass::text AS tgrelid FROM pg_trigger WHERE tgname LIKE 'trg_%_updated_at'")}
    finally:
        await conn.close()
    with_updated_at = {r[0] for r in ours["columns"] if r[1] == "updated_at"}
    assert triggers == with_updated_at
