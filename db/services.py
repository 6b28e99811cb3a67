"""Services of the marketplace registry and their maintainers."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db import sql
from db.errors import Conflict, NotFound
from db.pagination import PageRequest, page

# A row is visible when it is live and either public (approved/deprecated) or the caller's own.
VISIBLE = """
s.deleted_at IS NULL AND (
    s.status IN ('approved', 'deprecated') OR $1::boolean
    OR EXISTS (SELECT 1 FROM public.service_maintainers m WHERE m.service_id = s.id AND m.user_id = $2)
)
"""

LIST_SERVICES = f"""
SELECT s.* FROM public.service_registry s
WHERE {VISIBLE}
  AND ($3::text IS NULL OR s.category = $3)
  AND ($4::text IS NULL OR s.status = $4)
  AND ($5::boolean IS NULL OR s.verified = $5)
  AND ($6::text IS NULL OR s.name ILIKE $6 OR s.description ILIKE $6)
  AND ($7::timestamptz IS NULL OR (COALESCE(s.created_at, 'epoch'), s.id) > ($7, $8))
ORDER BY COALESCE(s.created_at, 'epoch'), s.id
LIMIT $9
"""

GET_VISIBLE = f"SELECT s.* FROM public.service_registry s WHERE s.id = $3 AND {VISIBLE}"

# FOR UPDATE: a status change or edit decides on the row as it is, not as it was.
LOCK_FOR_WRITE = """
SELECT s.*, EXISTS (SELECT 1 FROM public.service_maintainers m
                    WHERE m.service_id = s.id AND m.user_id = $2) AS is_maintainer
FROM public.service_registry s WHERE s.id = $1 AND s.deleted_at IS NULL
FOR UPDATE
"""
READ_FOR_REFUSAL = LOCK_FOR_WRITE.replace("FOR UPDATE", "")

ADD_MAINTAINER = """
INSERT INTO public.service_maintainers (service_id, user_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
"""
REMOVE_MAINTAINER = "DELETE FROM public.service_maintainers WHERE service_id = $1 AND user_id = $2"
SOFT_DELETE = "UPDATE public.service_registry SET deleted_at = NOW() WHERE id = $1"
SET_STATUS = """
UPDATE public.service_registry SET status = $2, status_reason = $3 WHERE id = $1 RETURNING *
"""


def _like(q: str | None) -> str | None:
    if q is None:
        return None
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_services(conn: asyncpg.Connection, *, admin: bool, user_id: UUID | None,
                        category: str | None, status: str | None, verified: bool | None,
                        q: str | None, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_SERVICES, admin, user_id, category, status, verified, _like(q),
                            request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request)


async def get_visible(conn: asyncpg.Connection, service_id: UUID, *, admin: bool,
                      user_id: UUID | None) -> dict[str, Any]:
    row = await conn.fetchrow(GET_VISIBLE, admin, user_id, service_id)
    if row is None:
        raise NotFound("No such service")
    return dict(row)


async def lock_for_write(conn: asyncpg.Connection, service_id: UUID,
                         user_id: UUID | None) -> dict[str, Any]:
    """The live service row, locked, with `is_maintainer` for the caller."""
    row = await conn.fetchrow(LOCK_FOR_WRITE, service_id, user_id)
    if row is None:
        # Row-level security lets only maintainers and platform admins lock (update) the row: to
        # anyone else it reads as not there. Read it unlocked to answer them 403 rather than 404
        # (they are refused either way, so the lock does not matter).
        row = await conn.fetchrow(READ_FOR_REFUSAL, service_id, user_id)
    if row is None:
        raise NotFound("No such service")
    return dict(row)


async def read_for_maintainer(conn: asyncpg.Connection, service_id: UUID, user_id: UUID | None) -> dict[str, Any]:
    """The live service row with `is_maintainer` for the caller, unlocked (for reads)."""
    row = await conn.fetchrow(READ_FOR_REFUSAL, service_id, user_id)
    if row is None:
        raise NotFound("No such service")
    return dict(row)


# Across spaces, counts only (migration 20250101001100).
SERVICE_HEALTH = "SELECT health_status, installations FROM public.gateway_service_health($1)"


async def service_health(conn: asyncpg.Connection, service_id: UUID) -> dict[str, int]:
    """Live, active installations of the service by verdict: healthy, unhealthy, unknown."""
    counts = {"healthy": 0, "unhealthy": 0, "unknown": 0}
    for row in await conn.fetch(SERVICE_HEALTH, service_id):
        status = row["health_status"] if row["health_status"] in ("healthy", "unhealthy") else "unknown"
        counts[status] += row["installations"]
    return counts


async def create_service(conn: asyncpg.Connection, values: dict[str, Any], maintainer: UUID) -> dict[str, Any]:
    statement, args = sql.insert("service_registry", values)
    try:
        row = await conn.fetchrow(statement, *args)
    except asyncpg.UniqueViolationError:
        # Slugs stay taken after a soft delete: a deleted plugin's URLs never pass to another.
        raise Conflict("This slug is already taken") from None
    await conn.execute(ADD_MAINTAINER, row["id"], maintainer)
    return dict(row)


async def update_service(conn: asyncpg.Connection, service_id: UUID, values: dict[str, Any]) -> dict[str, Any]:
    return await sql.update_one(conn, "service_registry", values, ["id = $1", "deleted_at IS NULL"],
                                [service_id], missing="No such service")


async def soft_delete(conn: asyncpg.Connection, service_id: UUID) -> None:
    await conn.execute(SOFT_DELETE, service_id)


async def set_status(conn: asyncpg.Connection, service_id: UUID, status: str, reason: str | None) -> dict[str, Any]:
    return dict(await conn.fetchrow(SET_STATUS, service_id, status, reason))


async def add_maintainer(conn: asyncpg.Connection, service_id: UUID, user_id: UUID) -> None:
    try:
        await conn.execute(ADD_MAINTAINER, service_id, user_id)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("No such user") from None


async def remove_maintainer(conn: asyncpg.Connection, service_id: UUID, user_id: UUID) -> bool:
    return bool(await conn.execute(REMOVE_MAINTAINER, service_id, user_id) != "DELETE 0")


# Other gateways drop their in-process copies when they hear this (delivered at commit).
NOTIFY_CACHE_PURGE = """
SELECT pg_notify('gateway_changes', json_build_object('table', 'cache_purge', 'op', 'PURGE', 'id', $1::text)::text)
"""


async def notify_cache_purge(conn: asyncpg.Connection, service_id: UUID) -> None:
    await conn.execute(NOTIFY_CACHE_PURGE, str(service_id))


HAS_RELATIVE_ROUTES = """
SELECT EXISTS (SELECT 1 FROM public.service_api_routes WHERE service_id = $1 AND target_url LIKE '/%')
"""


async def has_relative_routes(conn: asyncpg.Connection, service_id: UUID) -> bool:
    """Whether a route's target is a path relative to the service's api_base_url."""
    return bool(await conn.fetchval(HAS_RELATIVE_ROUTES, service_id))
