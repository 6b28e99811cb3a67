"""UI components: a service's own (installation_id NULL) and what a space gets to show."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db import sql
from db.errors import NotFound
from db.pagination import PageRequest, page

LIST_FOR_SERVICE = """
SELECT c.* FROM public.service_ui_components c
WHERE c.service_id = $1 AND c.installation_id IS NULL
  AND ($2::timestamptz IS NULL OR (COALESCE(c.created_at, 'epoch'), c.id) > ($2, $3))
ORDER BY COALESCE(c.created_at, 'epoch'), c.id
LIMIT $4
"""

GET_FOR_SERVICE = """
SELECT c.* FROM public.service_ui_components c
WHERE c.id = $1 AND c.service_id = $2 AND c.installation_id IS NULL
"""

DELETE_FOR_SERVICE = """
DELETE FROM public.service_ui_components
WHERE id = $1 AND service_id = $2 AND installation_id IS NULL
"""

# What a space shows: for each of its active installations of a live, public service, that
# service's own components and the installation's. UNIQUE (service_id, space_id) on installations
# means each component matches at most one installation, so no row comes back twice.
# $3 are the caller's permissions (space role, platform_admin); NULL or {} requires none.
LIST_FOR_SPACE = """
SELECT c.* FROM public.service_ui_components c
JOIN public.service_installations si
  ON (c.installation_id = si.id OR (c.installation_id IS NULL AND c.service_id = si.service_id))
JOIN public.service_registry s ON s.id = si.service_id
WHERE si.space_id = $1 AND si.deleted_at IS NULL AND si.status = 'active'
  AND s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
  AND ($2::text IS NULL OR c.placement = $2)
  AND (coalesce(cardinality(c.required_permissions), 0) = 0 OR c.required_permissions && $3::text[])
  AND ($4::timestamptz IS NULL OR (c.created_at, c.id) > ($4, $5))
ORDER BY COALESCE(c.created_at, 'epoch'), c.id
LIMIT $6
"""


async def list_for_service(conn: asyncpg.Connection, service_id: UUID, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_FOR_SERVICE, service_id, request.after_time, request.after_id,
                            request.limit + 1)
    return page([dict(r) for r in rows], request)


async def get_for_service(conn: asyncpg.Connection, component_id: UUID, service_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(GET_FOR_SERVICE, component_id, service_id)
    if row is None:
        raise NotFound("No such UI component")
    return dict(row)


async def create(conn: asyncpg.Connection, service_id: UUID, values: dict[str, Any]) -> dict[str, Any]:
    statement, args = sql.insert("service_ui_components", {**values, "service_id": service_id})
    return dict(await conn.fetchrow(statement, *args))


async def update(conn: asyncpg.Connection, component_id: UUID, service_id: UUID,
                 values: dict[str, Any]) -> dict[str, Any]:
    return await sql.update_one(conn, "service_ui_components", values,
                                ["id = $1", "service_id = $2", "installation_id IS NULL"],
                                [component_id, service_id], missing="No such UI component")


async def delete(conn: asyncpg.Connection, component_id: UUID, service_id: UUID) -> None:
    if await conn.execute(DELETE_FOR_SERVICE, component_id, service_id) == "DELETE 0":
        raise NotFound("No such UI component")


async def list_for_space(conn: asyncpg.Connection, space_id: UUID, *, placement: str | None,
                         permissions: list[str], request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_FOR_SPACE, space_id, placement, permissions,
                            request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request)
