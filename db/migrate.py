"""Apply migrations/*.sql in order, once, under an advisory lock.

Each file runs in its own transaction together with its row in `schema_migrations`, so a file
is either applied and recorded or not at all. The checksum of every applied file is compared
on each run: an edited migration is an error that names the file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from db import roles

log = logging.getLogger("gateway.migrate")

FILE_NAME = re.compile(r"^(\d{14})_([a-z0-9_]+)\.sql$")
OWN_TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", re.IGNORECASE | re.MULTILINE)
# Any constant works; it only has to be the same on every gateway of one database.
ADVISORY_LOCK_ID = 0x706C7567696E  # "plugin"

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)
"""
SELECT_APPLIED = "SELECT version, name, checksum FROM public.schema_migrations"
INSERT_APPLIED = "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"


def migrations_dir() -> Path:
    """The folder inside the installed package, or the repository's top-level one (editable)."""
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (package_root / "gateway" / "migrations", package_root / "migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("migrations folder not found next to the installed package")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named YYYYMMDDHHMMSS_description.sql")
        sql = path.read_text()
        if OWN_TRANSACTION.search(sql):
            raise MigrationError(f"{path.name}: remove BEGIN/COMMIT, the runner gives each file its transaction")
        found.append(Migration(match[1], match[2], sql))
    return found


def _check_applied(applied: dict[str, asyncpg.Record], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"{version}_{row['name']}.sql is applied but no longer exists")
        if migration.checksum != row["checksum"]:
            raise MigrationError(f"{migration.filename} changed after it was applied (checksum differs)")


async def pending_migrations(conn: asyncpg.Connection, known: list[Migration] | None = None) -> list[Migration]:
    """Migrations not yet applied; raises MigrationError if an applied one was edited."""
    known = known if known is not None else load_migrations()
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    applied = {r["version"]: r for r in await conn.fetch(SELECT_APPLIED)} if exists else {}
    _check_applied(applied, known)
    return [m for m in known if m.version not in applied]


async def migrate(dsn: str, folder: Path | None = None, *, app_role: str = "gateway_app") -> list[str]:
    """Apply pending migrations; returns the file names applied (empty when up to date).

    The roles the migrations name are created first, and the app role's privileges granted
    after (db/roles.py); RoleSetupNeeded when this login may not create roles."""
    known = load_migrations(folder)
    conn = await asyncpg.connect(dsn)
    try:
        # Session-level lock: the second of two gateways starting together waits here, then
        # finds nothing pending.
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            for created in await roles.ensure_roles(conn, app_role):
                log.info("created role %s", created)
            await conn.execute(CREATE_LEDGER)
            applied = []
            for migration in await pending_migrations(conn, known):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(INSERT_APPLIED, migration.version, migration.name, migration.checksum)
                log.info("applied %s", migration.filename)
                applied.append(migration.filename)
            await roles.grant_app_role(conn, app_role)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await conn.close()
