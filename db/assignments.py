"""Management plugin assignments, and the `management_plugin_id` that follows them.

Every write here ends by recomputing the instance service's `management_plugin_id` in the same
transaction, so the column can never disagree with the assignments a reader sees.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db import sql
from db.errors import Conflict, Invalid, NotFound
from db.pagination import PageRequest, page

# FOR UPDATE OF isv: assignment writes on one service take turns, so each recomputation of
# management_plugin_id sees the assignments every earlier writer committed.
LOCK_INSTANCE_SERVICE = """
SELECT isv.* FROM public.instance_services isv
JOIN public.infrastructure_instances i ON i.id = isv.instance_id
WHERE isv.id = $1 AND i.space_id = $2 AND i.deleted_at IS NULL
FOR UPDATE OF isv
"""

# Installed means what the proxy would serve: a live, active installation of a live service.
PLUGIN_INSTALLED = """
SELECT EXISTS (
    SELECT 1 FROM public.service_installations si
    JOIN public.service_registry s ON s.id = si.service_id AND s.deleted_at IS NULL
    WHERE si.service_id = $1 AND si.space_id = $2 AND si.status = 'active' AND si.deleted_at IS NULL
)
"""

LIST_ASSIGNMENTS = """
SELECT * FROM public.service_management_assignments
WHERE instance_service_id = $1
  AND ($2::timestamptz IS NULL OR (COALESCE(assigned_at, 'epoch'), id) > ($2, $3))
ORDER BY COALESCE(assigned_at, 'epoch'), id
LIMIT $4
"""

DELETE_ASSIGNMENT = """
DELETE FROM public.service_management_assignments WHERE instance_service_id = $1 AND plugin_id = $2
"""

REFRESH_MANAGEMENT_PLUGIN = """
UPDATE public.instance_services SET management_plugin_id = (
    SELECT a.plugin_id FROM public.service_management_assignments a
    WHERE a.instance_service_id = $1 AND a.is_active
    ORDER BY COALESCE(a.assigned_at, 'epoch') DESC, a.id DESC
    LIMIT 1
)
WHERE id = $1
"""


async def lock_instance_service(conn: asyncpg.Connection, space_id: UUID, service_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(LOCK_INSTANCE_SERVICE, service_id, space_id)
    if row is None:
        raise NotFound("No such instance service in this space")
    return dict(row)


async def list_assignments(conn: asyncpg.Connection, service_id: UUID, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_ASSIGNMENTS, service_id, request.after_time, request.after_id,
                            request.limit + 1)
    return page([dict(r) for r in rows], request, sort_key="assigned_at")


async def create_assignment(conn: asyncpg.Connection, space_id: UUID, values: dict[str, Any]) -> dict[str, Any]:
    """Insert the assignment (values carry id, instance_service_id, plugin_id, assigned_by and the
    sealed credentials) after checking the plugin is installed in the space."""
    if not await conn.fetchval(PLUGIN_INSTALLED, values["plugin_id"], space_id):
        raise Invalid("plugin_id", "is not a plugin installed (and active) in this space")
    statement, args = sql.insert("service_management_assignments", values)
    try:
        row = await conn.fetchrow(statement, *args)
    except asyncpg.UniqueViolationError:
        raise Conflict("This plugin is already assigned to this service") from None
    await conn.execute(REFRESH_MANAGEMENT_PLUGIN, values["instance_service_id"])
    return dict(row)


async def delete_assignment(conn: asyncpg.Connection, service_id: UUID, plugin_id: UUID) -> None:
    if await conn.execute(DELETE_ASSIGNMENT, service_id, plugin_id) == "DELETE 0":
        raise NotFound("This plugin is not assigned to this service")
    await conn.execute(REFRESH_MANAGEMENT_PLUGIN, service_id)
