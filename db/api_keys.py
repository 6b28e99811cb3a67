"""API keys of a space. Only the SHA-256 of a key is stored; these queries never return it.

Every gateway process holds the hashes of the live keys in memory (gateway.proxy.key_hashes),
kept current by the change notifications. A key created through this process is announced to
the `add_created_listener` listeners at once, so the next request may use it before its
notification has come back (it is still confirmed against PostgreSQL until then: the creating
transaction may yet roll back). `db/` never imports the gateway, hence the listeners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg

from db.callers import ApiKeyIdentity
from db.errors import NotFound

log = logging.getLogger("gateway.db")

CreatedListener = Callable[[ApiKeyIdentity, bytes], None]
_created_listeners: list[CreatedListener] = []


def add_created_listener(listener: CreatedListener) -> None:
    """Call `listener(identity, key_hash)` for every key `create_key` inserts (not yet committed)."""
    _created_listeners.append(listener)


def remove_created_listener(listener: CreatedListener) -> None:
    if listener in _created_listeners:
        _created_listeners.remove(listener)
from db.pagination import PageRequest, page

_SHOWN = "id, space_id, name, role, prefix, created_by, created_at, last_used_at"

LIST_KEYS = f"""
SELECT {_SHOWN} FROM public.api_keys
WHERE space_id = $1 AND revoked_at IS NULL
  AND ($2::timestamptz IS NULL OR (COALESCE(created_at, 'epoch'), id) > ($2, $3))
ORDER BY COALESCE(created_at, 'epoch'), id
LIMIT $4
"""

INSERT_KEY = f"""
INSERT INTO public.api_keys (space_id, name, role, prefix, key_hash, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {_SHOWN}
"""

REVOKE_KEY = """
UPDATE public.api_keys SET revoked_at = NOW()
WHERE id = $1 AND space_id = $2 AND revoked_at IS NULL
RETURNING id
"""


async def list_keys(conn: asyncpg.Connection, space_id: UUID, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_KEYS, space_id, request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request)


async def create_key(conn: asyncpg.Connection, space_id: UUID, *, name: str, role: str, prefix: str,
                     key_hash: bytes, created_by: UUID | None) -> dict[str, Any]:
    try:
        row = dict(await conn.fetchrow(INSERT_KEY, space_id, name, role, prefix, key_hash, created_by))
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("No such space") from None  # only platform admins get here for any space id
    identity = ApiKeyIdentity(row["id"], row["space_id"], row["role"])
    for listener in _created_listeners:
        try:
            listener(identity, key_hash)
        except Exception:  # a listener must never fail the creation
            log.exception("API key creation listener failed")
    return row


async def revoke_key(conn: asyncpg.Connection, space_id: UUID, key_id: UUID) -> None:
    """Revoked keys stop authenticating at once: callers are looked up with revoked_at IS NULL."""
    if await conn.fetchval(REVOKE_KEY, key_id, space_id) is None:
        raise NotFound("No such API key in this space")
