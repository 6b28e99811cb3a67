"""Who the caller is in the database: users, space memberships, API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM public.users WHERE id = $1)"

SPACE_ROLE = "SELECT role FROM public.space_members WHERE space_id = $1 AND user_id = $2"

SPACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM public.spaces WHERE id = $1)"

API_KEY_BY_HASH = """
SELECT id, space_id, role FROM public.api_keys
WHERE key_hash = $1 AND revoked_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class ApiKeyIdentity:
    id: UUID
    space_id: UUID
    role: str


async def user_exists(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID) -> bool:
    return bool(await conn.fetchval(USER_EXISTS, user_id))


async def space_role(conn: asyncpg.Connection | asyncpg.Pool, space_id: UUID, user_id: UUID) -> str | None:
    role: str | None = await conn.fetchval(SPACE_ROLE, space_id, user_id)
    return role


async def space_exists(conn: asyncpg.Connection | asyncpg.Pool, space_id: UUID) -> bool:
    return bool(await conn.fetchval(SPACE_EXISTS, space_id))


async def api_key_by_hash(conn: asyncpg.Connection | asyncpg.Pool, key_hash: bytes) -> ApiKeyIdentity | None:
    row = await conn.fetchrow(API_KEY_BY_HASH, key_hash)
    return None if row is None else ApiKeyIdentity(row["id"], row["space_id"], row["role"])


TOUCH_API_KEYS = "UPDATE public.api_keys SET last_used_at = $2 WHERE id = ANY($1::uuid[])"


async def touch_api_keys(conn: asyncpg.Connection | asyncpg.Pool, ids: list[UUID], at: datetime) -> None:
    await conn.execute(TOUCH_API_KEYS, ids, at)
