"""/healthz (the process runs) and /readyz (the gateway has reached its state at least once)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from db.migrate import MigrationError, pending_migrations
from db.pool import CONNECTION_ERRORS
from gateway.appkeys import DB
from gateway.proxy.runtime import PROXY
from gateway.redis_link import RedisLink

MIGRATIONS_RECHECK_SECONDS = 2.0


@dataclass(slots=True)
class Readiness:
    """What /readyz remembers. One object made with the app: a started app's items must not be
    set again (aiohttp deprecates it), and this is written long after the start."""
    since: float | None = None  # when the node became ready for good
    pending_migrations: list[str] = field(default_factory=list)


READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _database_answers(request: web.Request) -> bool:
    pool = request.app[DB].pool
    if pool is None:
        return False
    try:
        await pool.fetchval("SELECT 1", timeout=1)
    except Exception:  # noqa: BLE001 - a probe answers "down", never 500 (asyncpg's errors mid-outage vary)
        return False
    return True


async def _redis_state(link: RedisLink) -> str:
    if not link.configured:
        return "not configured"
    return "up" if await link.ping() else "down"


async def mark_ready_when_possible(app: web.Application) -> None:
    """Once PostgreSQL answers and every migration is applied, the node is ready for good. The
    migrations are looked at again every MIGRATIONS_RECHECK_SECONDS until none is pending: on
    Kubernetes the gateway's pods may start before the migration Job has run."""
    db, readiness = app[DB], app[READINESS]
    await db.ready.wait()
    assert db.pool is not None
    while True:
        try:
            async with db.pool.acquire() as conn:
                pending = [m.filename for m in await pending_migrations(conn)]
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):  # away, or mid-migration (no grants yet)
            pending = readiness.pending_migrations or ["(not known yet: the migrations table cannot be read)"]
        except MigrationError as exc:  # an applied migration was edited or removed
            pending = [f"({exc})"]
        readiness.pending_migrations = pending
        if not pending:
            break
        await asyncio.sleep(MIGRATIONS_RECHECK_SECONDS)
    await app[PROXY].loader.loaded.wait()
    readiness.since = time.time()


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    database = await _database_answers(request)
    loader = app[PROXY].loader
    age = loader.age
    identity = app[DB].identity
    body: dict[str, object] = {
        "database": "up" if database else "down",
        # Who logged in and the role every query runs as (row-level security holds that role).
        "database_role": None if identity is None else {"login": identity.login, "role": identity.role},
        "redis": await _redis_state(app[PROXY].redis),
        "cache_redis": await _redis_state(app[PROXY].cache.link),  # GATEWAY_CACHE_REDIS_URL, else REDIS_URL
        # Memberships, users and key hashes: past GATEWAY_CALLER_CACHE_TTL only while PostgreSQL is away.
        "callers": app[PROXY].callers.readiness(),
        "route_table": {"loaded": age is not None, "age_seconds": None if age is None else round(age, 3),
                        "routes": loader.state.table.size, "listening_for_changes": loader.listening,
                        # Not listening means changes may be missed: the table may be stale.
                        "stale": age is None or not loader.listening,
                        # "snapshot": PostgreSQL did not answer at start (GATEWAY_SNAPSHOT_PATH);
                        # age_seconds is then the snapshot's.
                        "source": loader.source},
    }
    readiness = app[READINESS]
    if readiness.since is not None:
        body["status"] = "ready"
        body["ready_for_seconds"] = round(time.time() - readiness.since, 3)
        # A node that lost PostgreSQL after start stays ready: it keeps serving from memory.
        return web.json_response(body)
    if loader.source == "snapshot" and loader.loaded.is_set():
        body["status"] = "ready"  # from the last-known-good state, until PostgreSQL answers
        return web.json_response(body)
    body["status"] = "starting"
    pending = readiness.pending_migrations
    if pending:
        body["missing"] = ["pending migrations: " + ", ".join(pending) + " (run gateway migrate)"]
    elif app[DB].refused:
        body["missing"] = [f"database role: {app[DB].refused}"]
    else:
        body["missing"] = ["database"] if app[DB].pool is None else ["route table"]
    return web.json_response(body, status=503)
