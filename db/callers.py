"""Who the caller is in the database: users, space memberships, API keys.

The one-row lookups are what a request asks when it meets a caller for the first time; the
batch reads (`users_exist`, `space_roles`) are the proxy's background refresh of what it holds,
and `live_api_keys` / `api_keys_by_id` / `api_keys_fingerprint` keep its in-memory key hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM public.users WHERE id = $1)"

SPACE_ROLE = "SELECT role FROM public.space_members WHERE space_id = $1 AND user_id = $2"

SPACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM public.spaces WHERE id = $1)"

# API keys are looked up across spaces (a key names its space), so through SECURITY DEFINER
# functions owned by gateway_reader / gateway_bookkeeper (migration 20250101000900).
API_KEY_BY_HASH = "SELECT * FROM public.gateway_api_key_by_hash($1)"


@dataclass(frozen=True, slots=True)
class ApiKeyIdentity:
    id: UUID
    space_id: UUID
    role: str


USERS_EXIST = """
SELECT k.id, u.id IS NOT NULL AS found
FROM unnest($1::uuid[]) AS k(id) LEFT JOIN public.users u ON u.id = k.id
"""

SPACE_ROLES = """
SELECT k.space_id, k.user_id, m.role
FROM unnest($1::uuid[], $2::uuid[]) AS k(space_id, user_id)
LEFT JOIN public.space_members m ON m.space_id = k.space_id AND m.user_id = k.user_id
"""

LIVE_API_KEYS = "SELECT * FROM public.gateway_live_api_keys()"

API_KEYS_BY_ID = "SELECT * FROM public.gateway_api_keys_by_id($1::uuid[])"

# Everything LIVE_API_KEYS returns, in one short value: the safety net for a missed notification.
API_KEYS_FINGERPRINT = "SELECT public.gateway_api_keys_fingerprint()"


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


async def users_exist(conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[UUID]) -> dict[UUID, bool]:
    return {row["id"]: row["found"] for row in await conn.fetch(USERS_EXIST, list(ids))}


async def space_roles(conn: asyncpg.Connection | asyncpg.Pool,
                      pairs: Sequence[tuple[UUID, UUID]]) -> dict[tuple[UUID, UUID], str | None]:
    """(space_id, user_id) → role, None for a pair that is not a membership."""
    rows = await conn.fetch(SPACE_ROLES, [p[0] for p in pairs], [p[1] for p in pairs])
    return {(row["space_id"], row["user_id"]): row["role"] for row in rows}


@dataclass(frozen=True, slots=True)
class LiveApiKey:
    identity: ApiKeyIdentity
    key_hash: bytes


def _live(rows: list[asyncpg.Record]) -> list[LiveApiKey]:
    return [LiveApiKey(ApiKeyIdentity(r["id"], r["space_id"], r["role"]), bytes(r["key_hash"])) for r in rows]


async def live_api_keys(pool: asyncpg.Pool) -> tuple[str, list[LiveApiKey]]:
    """Every key that authenticates, and their fingerprint, from one snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        fingerprint: str = await conn.fetchval(API_KEYS_FINGERPRINT)
        return fingerprint, _live(await conn.fetch(LIVE_API_KEYS))


async def api_keys_by_id(conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[UUID]) -> list[LiveApiKey]:
    """Those of `ids` that still authenticate (a revoked or deleted one is simply absent)."""
    return _live(await conn.fetch(API_KEYS_BY_ID, list(ids)))


async def api_keys_fingerprint(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    return str(await conn.fetchval(API_KEYS_FINGERPRINT))


TOUCH_API_KEYS = "SELECT public.gateway_touch_api_keys($1::uuid[], $2)"


async def touch_api_keys(conn: asyncpg.Connection | asyncpg.Pool, ids: list[UUID], at: datetime) -> None:
    await conn.execute(TOUCH_API_KEYS, ids, at)
