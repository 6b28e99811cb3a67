"""The migration runner: in order, once, idempotent, checksummed, safe under concurrency."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db.migrate import MigrationError, load_migrations, migrate, migrations_dir
from tests.conftest import _with_database, create_database, drop_database, gateway_client, make_settings

SCHEMA_SNAPSHOT = """
SELECT table_name, column_name, data_type, column_default, is_nullable
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT tablename, indexname, indexdef, NULL, NULL FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), NULL, NULL
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2, 3
"""


@pytest.fixture
async def empty_dsn(postgres_server: str) -> AsyncIterator[str]:
    name = await create_database(postgres_server, "template1")
    yield _with_database(postgres_server, name)
    await drop_database(postgres_server, name)


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def test_second_run_is_a_no_op(empty_dsn: str) -> None:
    applied = await migrate(empty_dsn)
    assert applied == [m.filename for m in load_migrations()]
    before = await _fetch(empty_dsn, SCHEMA_SNAPSHOT)
    ledger = await _fetch(empty_dsn, "SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1")

    assert await migrate(empty_dsn) == []
    assert await _fetch(empty_dsn, SCHEMA_SNAPSHOT) == before
    assert await _fetch(empty_dsn, "SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1") == ledger


async def test_concurrent_gateways_apply_each_migration_once(empty_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(empty_dsn) for _ in range(4)))
    # Exactly one runner applied everything; the others found nothing pending.
    assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]
    rows = await _fetch(empty_dsn, "SELECT count(*) AS n, count(DISTINCT version) AS d FROM schema_migrations")
    assert rows[0]["n"] == rows[0]["d"] == len(load_migrations())


async def test_changed_migration_is_named(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    await migrate(empty_dsn, folder)
    victim = sorted(folder.glob("*.sql"))[2]
    victim.write_text(victim.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match=victim.name):
        await migrate(empty_dsn, folder)


async def test_failed_migration_leaves_nothing_half_applied(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    (folder / "29990101000000_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(empty_dsn, folder)
    rows = await _fetch(empty_dsn, "SELECT to_regclass('public.half_done') AS t, "
                                   "(SELECT count(*) FROM schema_migrations WHERE version = '29990101000000') AS n")
    assert rows[0]["t"] is None and rows[0]["n"] == 0


def test_files_hold_no_transaction_of_their_own(tmp_path: Path) -> None:
    (tmp_path / "20250101000000_bad.sql").write_text("BEGIN;\nCREATE TABLE x (id int);\nCOMMIT;\n")
    with pytest.raises(MigrationError, match="BEGIN/COMMIT"):
        load_migrations(tmp_path)


async def test_updated_at_is_kept_current(db: asyncpg.Pool) -> None:
    row = await db.fetchrow(
        "INSERT INTO service_registry (name, slug, version, provider) VALUES ('a', 'updated-at', '1', 'p') "
        "RETURNING id, updated_at")
    await asyncio.sleep(0.01)
    after = await db.fetchval("UPDATE service_registry SET name = 'b' WHERE id = $1 RETURNING updated_at", row["id"])
    assert after > row["updated_at"]


async def test_platform_rows_need_only_the_contract_columns(db: asyncpg.Pool) -> None:
    user = await db.fetchval("INSERT INTO users (email) VALUES ('only@example.test') RETURNING id")
    space = await db.fetchval("INSERT INTO spaces (name) VALUES ('only') RETURNING id")
    await db.execute("INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, 'viewer')", space, user)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, 'king')",
                         await db.fetchval("INSERT INTO spaces (name) VALUES ('x') RETURNING id"), user)


async def test_a_node_started_before_the_migrations_turns_ready_once_they_are_applied(empty_dsn: str) -> None:
    # Kubernetes may start the gateway's pods before the migration Job has run.
    async with gateway_client(make_settings(empty_dsn)) as client:
        deadline = time.monotonic() + 20
        while True:
            ready = await client.get("/readyz")
            body = await ready.json()
            # Before `gateway migrate` the role may not exist yet either (a fresh server).
            if any(m.startswith(("pending migrations", "database role")) for m in body.get("missing", [])):
                break
            assert time.monotonic() < deadline, str(body)
            await asyncio.sleep(0.2)
        assert ready.status == 503
        await migrate(empty_dsn)
        deadline = time.monotonic() + 30
        while (ready := await client.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, await ready.text()
            await asyncio.sleep(0.3)
        assert (await ready.json())["status"] == "ready"
