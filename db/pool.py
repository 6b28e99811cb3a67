"""The asyncpg pool, and transactions that carry the caller for row-level security and audit."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from db.errors import DatabaseUnavailable

log = logging.getLogger("gateway.db")

# Errors meaning "the server is not there", as opposed to a bad query.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                     asyncpg.InterfaceError, asyncio.TimeoutError)

SET_CALLER = """
SELECT set_config('app.user_id', $1, true), set_config('app.space_id', $2, true)
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSONB in and out as Python objects; the API layer has validated them already.
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        command_timeout=30, timeout=5,
    )


class Database:
    """Holds the pool once PostgreSQL has answered; until then every use raises DatabaseUnavailable.

    The gateway must start (and keep serving from memory) while PostgreSQL is away, so the pool is
    opened by a background task that retries, not in the startup path.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None
        self.ready = asyncio.Event()

    async def connect(self, *, retry_seconds: float = 1.0) -> None:
        while self.pool is None:
            try:
                self.pool = await create_pool(self.dsn)
            except CONNECTION_ERRORS as exc:
                log.warning("PostgreSQL not reachable yet: %s", type(exc).__name__)
                await asyncio.sleep(retry_seconds)
        self.ready.set()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def require(self) -> asyncpg.Pool:
        if self.pool is None:
            raise DatabaseUnavailable("database not connected")
        return self.pool

    @asynccontextmanager
    async def transaction(self, *, user_id: UUID | None = None,
                          space_id: UUID | None = None) -> AsyncIterator[asyncpg.Connection]:
        """One transaction carrying the caller in `app.user_id` / `app.space_id` (transaction-local)."""
        try:
            async with self.require().acquire() as conn, conn.transaction():
                await conn.execute(SET_CALLER, str(user_id or ""), str(space_id or ""))
                yield conn
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
