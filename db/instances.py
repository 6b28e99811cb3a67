"""Infrastructure instances of a space (soft-deleted rows are invisible)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db import scopes, sql
from db.errors import NotFound
from db.pagination import PageRequest, page

LIST_INSTANCES = """
SELECT * FROM public.infrastructure_instances
WHERE space_id = $1 AND deleted_at IS NULL
  AND ($2::timestamptz IS NULL OR (COALESCE(created_at, 'epoch'), id) > ($2, $3))
ORDER BY COALESCE(created_at, 'epoch'), id
LIMIT $4
"""

# FOR UPDATE: a PATCH keeps the stored secrets envelope, and a discovery sync of the instance's
# services must not interleave with another one; both decide on the row as it is now.
LOCK_INSTANCE = """
SELECT * FROM public.infrastructure_instances
WHERE id = $1 AND space_id = $2 AND deleted_at IS NULL
FOR UPDATE
"""

SOFT_DELETE = """
UPDATE public.infrastructure_instances SET deleted_at = NOW()
WHERE id = $1 AND space_id = $2 AND deleted_at IS NULL
"""


async def list_instances(conn: asyncpg.Connection, space_id: UUID, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_INSTANCES, space_id, request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request)


async def get_instance(conn: asyncpg.Connection, space_id: UUID, instance_id: UUID) -> dict[str, Any]:
    return await scopes.live_instance(conn, space_id, instance_id)


async def lock_instance(conn: asyncpg.Connection, space_id: UUID, instance_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(LOCK_INSTANCE, instance_id, space_id)
    if row is None:
        raise NotFound("No such instance in this space")
    return dict(row)


async def create_instance(conn: asyncpg.Connection, values: dict[str, Any]) -> dict[str, Any]:
    """`values` carries the id, space_id and created_by along with the caller's columns."""
    statement, args = sql.insert("infrastructure_instances", values)
    return dict(await conn.fetchrow(statement, *args))


async def update_instance(conn: asyncpg.Connection, space_id: UUID, instance_id: UUID,
                          values: dict[str, Any]) -> dict[str, Any]:
    return await sql.update_one(conn, "infrastructure_instances", values,
                                ["id = $1", "space_id = $2", "deleted_at IS NULL"], [instance_id, space_id],
                                missing="No such instance in this space")


async def soft_delete(conn: asyncpg.Connection, space_id: UUID, instance_id: UUID) -> None:
    if await conn.execute(SOFT_DELETE, instance_id, space_id) == "UPDATE 0":
        raise NotFound("No such instance in this space")
