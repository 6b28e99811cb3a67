"""API keys of a space. Only the SHA-256 of a key is stored; these queries never return it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db.errors import NotFound
from db.pagination import PageRequest, page

_SHOWN = "id, space_id, name, role, prefix, created_by, created_at, last_used_at"

LIST_KEYS = f"""
SELECT {_SHOWN} FROM public.api_keys
WHERE space_id = $1 AND revoked_at IS NULL
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
ORDER BY created_at, id
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
        return dict(await conn.fetchrow(INSERT_KEY, space_id, name, role, prefix, key_hash, created_by))
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("No such space") from None  # only platform admins get here for any space id


async def revoke_key(conn: asyncpg.Connection, space_id: UUID, key_id: UUID) -> None:
    """Revoked keys stop authenticating at once: callers are looked up with revoked_at IS NULL."""
    if await conn.fetchval(REVOKE_KEY, key_id, space_id) is None:
        raise NotFound("No such API key in this space")
