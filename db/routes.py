"""API routes: the service-wide ones (installation_id NULL) and those of one installation.

Every function takes the route's scope, (service_id, installation_id), so a route id from
another service or installation is simply not found.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db import sql
from db.errors import Conflict, NotFound
from db.pagination import PageRequest, page

DUPLICATE = "A route with this route_path and method already exists here"

# Read-side counterpart of services.lock_for_write: no lock, since nothing is written.
SERVICE_FOR_READ = """
SELECT s.id, s.status, s.api_base_url,
       EXISTS (SELECT 1 FROM public.service_maintainers m
               WHERE m.service_id = s.id AND m.user_id = $2) AS is_maintainer
FROM public.service_registry s WHERE s.id = $1 AND s.deleted_at IS NULL
"""

API_BASE_URL = "SELECT api_base_url FROM public.service_registry WHERE id = $1"

# The URLs whose hosts the vendor declared: an installation's routes may use those hosts only.
SERVICE_TARGETS = """
SELECT target_url FROM public.service_api_routes WHERE service_id = $1 AND installation_id IS NULL
"""

LIST_ROUTES = """
SELECT r.* FROM public.service_api_routes r
WHERE r.service_id = $1 AND r.installation_id IS NOT DISTINCT FROM $2::uuid
  AND ($3::timestamptz IS NULL OR (COALESCE(r.created_at, 'epoch'), r.id) > ($3, $4))
ORDER BY COALESCE(r.created_at, 'epoch'), r.id
LIMIT $5
"""

# FOR UPDATE when a PATCH merges into the row: the cross-field checks judge the row as it is.
GET_ROUTE = """
SELECT r.* FROM public.service_api_routes r
WHERE r.id = $1 AND r.service_id = $2 AND r.installation_id IS NOT DISTINCT FROM $3::uuid
"""

DELETE_ROUTE = """
DELETE FROM public.service_api_routes
WHERE id = $1 AND service_id = $2 AND installation_id IS NOT DISTINCT FROM $3::uuid
"""


async def service_for_read(conn: asyncpg.Connection, service_id: UUID, user_id: UUID | None) -> dict[str, Any]:
    """The live service's status and api_base_url, with `is_maintainer` for the caller."""
    row = await conn.fetchrow(SERVICE_FOR_READ, service_id, user_id)
    if row is None:
        raise NotFound("No such service")
    return dict(row)


async def api_base_url(conn: asyncpg.Connection, service_id: UUID) -> str | None:
    base: str | None = await conn.fetchval(API_BASE_URL, service_id)
    return base


async def vendor_urls(conn: asyncpg.Connection, service_id: UUID) -> tuple[str | None, list[str]]:
    """The service's api_base_url and its service-wide routes' target_urls."""
    rows = await conn.fetch(SERVICE_TARGETS, service_id)
    return await api_base_url(conn, service_id), [r["target_url"] for r in rows]


async def list_routes(conn: asyncpg.Connection, service_id: UUID, installation_id: UUID | None,
                      request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_ROUTES, service_id, installation_id,
                            request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request)


async def get_route(conn: asyncpg.Connection, route_id: UUID, service_id: UUID,
                    installation_id: UUID | None, *, lock: bool = False) -> dict[str, Any]:
    row = await conn.fetchrow(GET_ROUTE + (" FOR UPDATE" if lock else ""),
                              route_id, service_id, installation_id)
    if row is None:
        raise NotFound("No such route")
    return dict(row)


async def create_route(conn: asyncpg.Connection, service_id: UUID, installation_id: UUID | None,
                       values: dict[str, Any]) -> dict[str, Any]:
    statement, args = sql.insert(
        "service_api_routes", {**values, "service_id": service_id, "installation_id": installation_id})
    try:
        return dict(await conn.fetchrow(statement, *args))
    except asyncpg.UniqueViolationError:
        raise Conflict(DUPLICATE) from None


async def update_route(conn: asyncpg.Connection, route_id: UUID, values: dict[str, Any]) -> dict[str, Any]:
    """Change a route the caller has already found (and locked) with `get_route`."""
    return await sql.update_one(conn, "service_api_routes", values, ["id = $1"], [route_id],
                                missing="No such route", duplicate=DUPLICATE)


async def delete_route(conn: asyncpg.Connection, route_id: UUID, service_id: UUID,
                       installation_id: UUID | None) -> None:
    if await conn.execute(DELETE_ROUTE, route_id, service_id, installation_id) == "DELETE 0":
        raise NotFound("No such route")
