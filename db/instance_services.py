"""Services on an instance: listing, single writes, and the discovery sync.

Callers check first that the instance is a live one of the path's space (db.scopes); every
statement here is also bound to that instance id, so a service id of another instance names nothing.
"""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

import asyncpg

from db import queries, sql
from db.errors import Conflict, NotFound
from db.pagination import PageRequest, page

# Newest discovered first; the cursor is the last item's (discovered_at, id), so the next page
# holds what sorts strictly below it. LIMIT NULL means all rows.
_PAGE_OF = """
SELECT * FROM ({query}) q
WHERE ($2::timestamptz IS NULL OR (COALESCE(q.discovered_at, 'epoch'), q.id) < ($2, $3))
ORDER BY COALESCE(q.discovered_at, 'epoch') DESC, q.id DESC
LIMIT $4
"""
LIST_SERVICES = _PAGE_OF.format(query=queries.SERVICES_ON_INSTANCE)
LIST_MANAGED = _PAGE_OF.format(query=queries.SERVICES_WITH_MANAGEMENT_PLUGINS)

DELETE_SERVICE = "DELETE FROM public.instance_services WHERE id = $1 AND instance_id = $2"

# Columns a discovery item may carry; names are checked against this before they reach the SQL.
SYNC_COLUMNS: Final = frozenset(
    {"name", "type", "status", "service_config", "endpoints", "health_check_url", "management_config"})
KEY_COLUMNS: Final = ("name", "type")

# Only the columns the item sent are overwritten: what discovery did not report stays as it was.
UPSERT = """
INSERT INTO public.instance_services (instance_id, {columns}) VALUES ($1, {placeholders})
ON CONFLICT (instance_id, name, type) DO UPDATE SET {updates}last_seen = NOW()
RETURNING id
"""

# Skips rows already stopped so their updated_at keeps meaning "last changed".
MARK_MISSING_STOPPED = """
UPDATE public.instance_services SET status = 'stopped'
WHERE instance_id = $1 AND NOT (id = ANY($2::uuid[])) AND status IS DISTINCT FROM 'stopped'
"""

DUPLICATE = "A service with this name and type already exists on this instance"


async def list_services(conn: asyncpg.Connection, instance_id: UUID, *, managed: bool,
                        request: PageRequest) -> dict[str, Any]:
    """`managed` keeps only services with a management plugin and adds plugin_name/plugin_slug."""
    rows = await conn.fetch(LIST_MANAGED if managed else LIST_SERVICES, instance_id,
                            request.after_time, request.after_id, request.limit + 1)
    return page([dict(r) for r in rows], request, sort_key="discovered_at")


async def all_services(conn: asyncpg.Connection, instance_id: UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST_SERVICES, instance_id, None, None, None)]


async def create_service(conn: asyncpg.Connection, instance_id: UUID, values: dict[str, Any]) -> dict[str, Any]:
    statement, args = sql.insert("instance_services", {**values, "instance_id": instance_id})
    try:
        return dict(await conn.fetchrow(statement, *args))
    except asyncpg.UniqueViolationError:
        raise Conflict(DUPLICATE) from None


async def update_service(conn: asyncpg.Connection, instance_id: UUID, service_id: UUID,
                         values: dict[str, Any]) -> dict[str, Any]:
    return await sql.update_one(conn, "instance_services", values, ["id = $1", "instance_id = $2"],
                                [service_id, instance_id], missing="No such service on this instance",
                                duplicate=DUPLICATE)


async def delete_service(conn: asyncpg.Connection, instance_id: UUID, service_id: UUID) -> None:
    if await conn.execute(DELETE_SERVICE, service_id, instance_id) == "DELETE 0":
        raise NotFound("No such service on this instance")


def _upsert_statement(columns: list[str]) -> str:
    unknown = set(columns) - SYNC_COLUMNS
    if unknown or not set(KEY_COLUMNS) <= set(columns):
        raise ValueError(f"not a discovery column set: {sorted(columns)}")
    updates = "".join(f"{c} = EXCLUDED.{c}, " for c in columns if c not in KEY_COLUMNS)
    placeholders = ", ".join(f"${i}" for i in range(2, len(columns) + 2))
    return UPSERT.format(columns=", ".join(columns), placeholders=placeholders, updates=updates)


async def sync_services(conn: asyncpg.Connection, instance_id: UUID,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Upsert each item by (name, type), refreshing last_seen; stop the services not listed.

    Run it in one transaction with the instance row locked, and with (name, type) unique among
    the items (the caller checks): a repeated pair would silently keep only its last version.
    """
    seen = []
    for item in items:
        columns = list(item)
        seen.append(await conn.fetchval(_upsert_statement(columns), instance_id, *item.values()))
    await conn.execute(MARK_MISSING_STOPPED, instance_id, seen)
    return await all_services(conn, instance_id)
