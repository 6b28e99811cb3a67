"""Installations of services in spaces.

Lock order, kept by every write here so concurrent installs and uninstalls cannot deadlock:
the service row first (FOR NO KEY UPDATE), then the installation row. The trigger that keeps
`installation_count` (migration 20250101000700) updates the service row anyway, so taking its
lock up front costs nothing and makes the approved-status check hold until commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg

from db import scopes, sql
from db.encryption import credential_keys
from db.errors import Conflict, Invalid, NotFound
from db.pagination import PageRequest, page

# Live installations of live services, with the service's slug and name for responses.
LIVE_IN_SPACE = """
SELECT si.*, s.slug AS service_slug, s.name AS service_name
FROM public.service_installations si
JOIN public.service_registry s ON s.id = si.service_id AND s.deleted_at IS NULL
WHERE si.space_id = $1 AND si.deleted_at IS NULL
"""

LIST_INSTALLATIONS = LIVE_IN_SPACE + """
  AND ($2::timestamptz IS NULL OR (COALESCE(si.installed_at, 'epoch'), si.id) > ($2, $3))
ORDER BY COALESCE(si.installed_at, 'epoch'), si.id
LIMIT $4
"""

GET_INSTALLATION = LIVE_IN_SPACE + " AND si.id = $2"


def _present(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The row as responses may see it: the credential envelope becomes its names only."""
    values = dict(row)
    values["credential_keys"] = credential_keys(values.pop("credentials", None))
    return values


async def list_installations(conn: asyncpg.Connection, space_id: UUID, request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_INSTALLATIONS, space_id, request.after_time, request.after_id,
                            request.limit + 1)
    # installed_at is the sort key: a revived installation reappears at the end, like a new one.
    return page([_present(r) for r in rows], request, sort_key="installed_at")


async def get_installation(conn: asyncpg.Connection, space_id: UUID, installation_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(GET_INSTALLATION, space_id, installation_id)
    if row is None:
        raise NotFound("No such installation in this space")
    return _present(row)


# `visible` mirrors db/services.VISIBLE, so that the error for a pending service the caller may
# not see is the same as for one that does not exist.
LOCK_SERVICE = """
SELECT s.id, s.slug, s.name, s.status,
       (s.status IN ('approved', 'deprecated') OR $3::boolean OR EXISTS (
            SELECT 1 FROM public.service_maintainers m WHERE m.service_id = s.id AND m.user_id = $4
       )) AS visible
FROM public.service_registry s
WHERE (s.id = $1 OR s.slug = $2) AND s.deleted_at IS NULL
"""
# The service row's lock, through a SECURITY DEFINER function (migration 20250101000900): a space
# admin may not lock a marketplace row itself. Taken before LOCK_SERVICE reads the row, so that
# read sees the row as it stays until commit.
LOCK_SERVICE_ROW = "SELECT public.gateway_lock_service($1, $2)"


async def lock_installable_service(conn: asyncpg.Connection, *, service_id: UUID | None, slug: str | None,
                                   admin: bool, user_id: UUID | None) -> dict[str, Any]:
    """The approved, live service named by id or slug, locked; else Invalid naming that field."""
    field = "service_id" if service_id is not None else "slug"
    await conn.execute(LOCK_SERVICE_ROW, service_id, slug)
    row = await conn.fetchrow(LOCK_SERVICE, service_id, slug, admin, user_id)
    if row is None or not row["visible"]:
        raise Invalid(field, "names no approved service")
    if row["status"] != "approved":
        raise Invalid(field, f"the service is {row['status']}; only approved services can be installed")
    return dict(row)


LOCK_EXISTING = """
SELECT id, deleted_at FROM public.service_installations
WHERE service_id = $1 AND space_id = $2
FOR UPDATE
"""

# ON CONFLICT only matters to a writer that skipped the service lock; then it is a 409, not a 500.
INSERT_INSTALLATION = """
INSERT INTO public.service_installations
    (id, service_id, space_id, installed_by, config, credentials, permissions, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (service_id, space_id) DO NOTHING
RETURNING *
"""

# The seed's UNIQUE (service_id, space_id) stays, so reinstalling revives the soft-deleted row
# (keeping its id, and with it the installation's routes). Health is the old install's: cleared.
REVIVE_INSTALLATION = """
UPDATE public.service_installations
SET deleted_at = NULL, installed_at = NOW(), installed_by = $2, config = $3, credentials = $4,
    permissions = $5, status = $6, last_health_check = NULL, health_status = NULL
WHERE id = $1 AND deleted_at IS NOT NULL
RETURNING *
"""


async def install(conn: asyncpg.Connection, service: dict[str, Any], space_id: UUID, *,
                  installed_by: UUID | None, values: dict[str, Any],
                  seal: Callable[[UUID], dict[str, Any]]) -> dict[str, Any]:
    """Insert or revive the installation of a service locked by `lock_installable_service`.

    `seal(row_id)` encrypts the credentials for the row they will live in; `values` holds
    config, permissions and status.
    """
    existing = await conn.fetchrow(LOCK_EXISTING, service["id"], space_id)
    if existing is not None and existing["deleted_at"] is None:
        raise Conflict("This service is already installed in this space")
    row_id: UUID = existing["id"] if existing is not None else uuid.uuid4()
    args = (values["config"], seal(row_id), values["permissions"], values["status"])
    if existing is not None:
        row = await conn.fetchrow(REVIVE_INSTALLATION, row_id, installed_by, *args)
    else:
        try:
            row = await conn.fetchrow(INSERT_INSTALLATION, row_id, service["id"], space_id, installed_by, *args)
        except asyncpg.ForeignKeyViolationError:
            # The service is locked and the caller authenticated: the missing row is the space
            # (a platform admin may name any space id).
            raise NotFound("No such space") from None
    if row is None:
        raise Conflict("This service is already installed in this space")
    return _present({**dict(row), "service_slug": service["slug"], "service_name": service["name"]})


_LIVE_FOR_UPDATE = [
    "id = $1", "space_id = $2", "deleted_at IS NULL",
    "EXISTS (SELECT 1 FROM public.service_registry s"
    " WHERE s.id = service_installations.service_id AND s.deleted_at IS NULL)",
]


async def update_installation(conn: asyncpg.Connection, space_id: UUID, installation_id: UUID,
                              values: dict[str, Any]) -> dict[str, Any]:
    """Change config, credentials (already sealed), permissions or status; never deleted_at."""
    statement, args = sql.update("service_installations", values, _LIVE_FOR_UPDATE,
                                 [installation_id, space_id], returning="id")
    if await conn.fetchval(statement, *args) is None:
        raise NotFound("No such installation in this space")
    return await get_installation(conn, space_id, installation_id)



# Re-checks deleted_at after waiting for the row lock, so of two concurrent uninstalls one wins
# and the other finds nothing (404) instead of counting the installation out twice.
SOFT_DELETE = """
UPDATE public.service_installations SET deleted_at = NOW()
WHERE id = $1 AND space_id = $2 AND deleted_at IS NULL
RETURNING id
"""


async def uninstall(conn: asyncpg.Connection, space_id: UUID, installation_id: UUID) -> None:
    row = await scopes.live_installation(conn, space_id, installation_id)
    await conn.execute(LOCK_SERVICE_ROW, row["service_id"], None)
    if await conn.fetchval(SOFT_DELETE, installation_id, space_id) is None:
        raise NotFound("No such installation in this space")
