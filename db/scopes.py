"""Find a row inside the space (or service) named in the path, or raise NotFound.

A row id that belongs to another space, or is soft-deleted, is simply "not found": the API
never confirms that another tenant's row exists.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db.errors import NotFound

LIVE_INSTALLATION = """
SELECT si.* FROM public.service_installations si
JOIN public.service_registry s ON s.id = si.service_id AND s.deleted_at IS NULL
WHERE si.id = $1 AND si.space_id = $2 AND si.deleted_at IS NULL
"""

LIVE_INSTANCE = """
SELECT * FROM public.infrastructure_instances
WHERE id = $1 AND space_id = $2 AND deleted_at IS NULL
"""

INSTANCE_SERVICE_IN_SPACE = """
SELECT isv.* FROM public.instance_services isv
JOIN public.infrastructure_instances i ON i.id = isv.instance_id
WHERE isv.id = $1 AND i.space_id = $2 AND i.deleted_at IS NULL
"""


async def _one(conn: asyncpg.Connection, query: str, what: str, *args: Any) -> dict[str, Any]:
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise NotFound(f"No such {what} in this space")
    return dict(row)


async def live_installation(conn: asyncpg.Connection, space_id: UUID, installation_id: UUID) -> dict[str, Any]:
    return await _one(conn, LIVE_INSTALLATION, "installation", installation_id, space_id)


async def live_instance(conn: asyncpg.Connection, space_id: UUID, instance_id: UUID) -> dict[str, Any]:
    return await _one(conn, LIVE_INSTANCE, "instance", instance_id, space_id)


async def instance_service_in_space(conn: asyncpg.Connection, space_id: UUID, service_id: UUID) -> dict[str, Any]:
    return await _one(conn, INSTANCE_SERVICE_IN_SPACE, "instance service", service_id, space_id)
