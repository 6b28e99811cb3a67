"""The asyncpg pool, and transactions that carry the caller for row-level security and audit.

Every PostgreSQL failure the gateway meets on a connection made here is reported to the
listeners of `add_failure_listener` (the gateway counts them in
gateway_dependency_errors_total{dependency="postgres"}): a connection that could not be opened
(the pool's first one, or one it opens again after the server went away), and a call on an open
one that failed because the server went away or did not answer in time. `db/` never imports the
gateway, hence the listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.connection import LoggedQuery

from db import roles
from db.errors import DatabaseUnavailable

log = logging.getLogger("gateway.db")

# Errors meaning "the server is not there", as opposed to a bad query.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                     asyncpg.InterfaceError, asyncio.TimeoutError)
# How often a GATEWAY_DB_ROLE that does not exist yet is asked for again.
ROLE_RETRY_SECONDS = 2.0
# What counts as a failure of PostgreSQL itself: the above, and a server shutting down under a
# call (57P01/57P02). Not a bad query, a constraint, a cancellation.
FAILURES = (*CONNECTION_ERRORS, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)

_failure_listeners: list[Callable[[BaseException], None]] = []


def add_failure_listener(listener: Callable[[BaseException], None]) -> None:
    """Call `listener(exc)` on every PostgreSQL failure met on a connection from `connect`."""
    _failure_listeners.append(listener)


def _failed(exc: BaseException) -> None:
    for listener in _failure_listeners:
        try:
            listener(exc)
        except Exception:  # a listener must never turn a counted failure into another one
            log.exception("PostgreSQL failure listener failed")


def _query_done(record: LoggedQuery) -> None:
    if isinstance(record.exception, FAILURES):
        _failed(record.exception)


async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, whose failures, and those of every call on the connection, are
    reported (see the module's docstring). The pool opens its connections with it; so may any
    other long-lived connection of the gateway (the change listener's)."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
    except FAILURES as exc:
        _failed(exc)
        raise
    conn.add_query_logger(_query_done)
    return conn

# Transaction-local (set_config's `true`): a pooled connection never carries one caller's
# settings into the next transaction. Row-level security reads app.space_id, app.user_id and
# app.platform_admin (migrations/20250101000900_roles_and_row_security.sql); the audit triggers
# also read app.api_key_id and app.request_id.
SET_CALLER = """
SELECT set_config('app.user_id', $1, true), set_config('app.space_id', $2, true),
       set_config('app.platform_admin', $3, true), set_config('app.api_key_id', $4, true),
       set_config('app.request_id', $5, true)
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSONB in and out as Python objects; the API layer has validated them already.
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, role: str | None = None) -> asyncpg.Pool:
    """`role`: every connection's queries run as that role (db/roles.py), else as the login."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, connect=connect,
        command_timeout=30, timeout=5, server_settings=roles.connect_settings(role) if role else None,
    )


class Database:
    """Holds the pool once PostgreSQL has answered; until then every use raises DatabaseUnavailable.

    The gateway must start (and keep serving from memory) while PostgreSQL is away, so the pool is
    opened by a background task that retries, not in the startup path.
    """

    def __init__(self, dsn: str, role: str | None = None) -> None:
        """`role` (GATEWAY_DB_ROLE): the role every query runs as. It is checked once the pool
        opens: a superuser, BYPASSRLS or owner role is refused (`refused` says why) and the pool
        is never used, so row-level security holds every query or there are none. A role that
        does not exist (yet) is asked for again every ROLE_RETRY_SECONDS."""
        self.dsn = dsn
        self.role = role
        self.pool: asyncpg.Pool | None = None
        self.identity: roles.Identity | None = None
        self.refused: str | None = None
        self.ready = asyncio.Event()

    async def connect(self, *, retry_seconds: float = 1.0) -> None:
        while self.pool is None:
            try:
                pool = await create_pool(self.dsn, role=self.role)
            except CONNECTION_ERRORS as exc:
                log.warning("PostgreSQL not reachable yet: %s", type(exc).__name__)
                await asyncio.sleep(retry_seconds)
                continue
            except asyncpg.InvalidParameterValueError as exc:  # the role does not exist, or is not ours
                # Not yet, maybe: `gateway migrate` creates the role, and on Kubernetes the pods may
                # start before the migration Job has run. Said once, then asked again quietly.
                reason = f"cannot run queries as {self.role!r}: {exc}"
                if self.refused != reason:
                    await self._refuse(None, reason)
                await asyncio.sleep(max(retry_seconds, ROLE_RETRY_SECONDS))
                continue
            if self.role is not None:
                try:
                    async with pool.acquire() as conn:
                        self.identity = await roles.check_identity(conn, self.role)
                except roles.UnsafeRole as exc:
                    await self._refuse(pool, str(exc))
                    return
                if self.identity.login_privileged:
                    log.warning("the login %r is a superuser, BYPASSRLS or the tables' owner: fine for "
                                "development; production logs in as a member of %r only",
                                self.identity.login, self.role)
            self.pool, self.refused = pool, None
        self.ready.set()

    async def _refuse(self, pool: asyncpg.Pool | None, reason: str) -> None:
        self.refused = reason
        log.critical("refusing to use PostgreSQL: %s (set GATEWAY_DB_ROLE, run `gateway migrate`)", reason)
        if pool is not None:
            await pool.close()

    async def connect_one(self, *, timeout: float = 5) -> asyncpg.Connection:
        """A connection of its own (the change listener's), with the pool's role and failure counting."""
        return await connect(self.dsn, timeout=timeout,
                             server_settings=roles.connect_settings(self.role) if self.role else None)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def require(self) -> asyncpg.Pool:
        if self.pool is None:
            raise DatabaseUnavailable("database not connected")
        return self.pool

    @asynccontextmanager
    async def transaction(self, *, user_id: UUID | None = None, space_id: UUID | None = None,
                          platform_admin: bool = False, api_key_id: UUID | None = None,
                          request_id: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """One transaction carrying the caller in the `app.*` settings (see SET_CALLER)."""
        try:
            async with self.require().acquire() as conn, conn.transaction():
                await conn.execute(SET_CALLER, str(user_id or ""), str(space_id or ""),
                                   "on" if platform_admin else "off", str(api_key_id or ""), request_id or "")
                yield conn
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
