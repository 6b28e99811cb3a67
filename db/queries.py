"""The seed's "Common Queries" (database-schema.md), one function each.

The SQL is the seed's, verbatim but for three changes: the category is a parameter instead of the
literal 'business-intelligence', the trailing semicolons are gone (so a query can be wrapped as a
subquery, as the instance services listing does), and the alias `is` is `isv` (see below).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

PLUGINS_IN_CATEGORY = """
SELECT * FROM public.service_registry
WHERE category = $1
AND status = 'approved'
AND deleted_at IS NULL
"""

# `sr.*, si.*` repeats the names id, status, updated_at and deleted_at; asyncpg resolves a
# repeated name to its last column, so those are the installation's and the service is `service_id`.
INSTALLED_PLUGINS_FOR_SPACE = """
SELECT sr.*, si.*
FROM public.service_installations si
JOIN public.service_registry sr ON sr.id = si.service_id
WHERE si.space_id = $1
AND si.status = 'active'
AND si.deleted_at IS NULL
"""

SERVICES_ON_INSTANCE = """
SELECT * FROM public.instance_services
WHERE instance_id = $1
ORDER BY discovered_at DESC
"""

# The seed aliases instance_services as `is`, a reserved word in PostgreSQL (a syntax error):
# the alias here is `isv`.
SERVICES_WITH_MANAGEMENT_PLUGINS = """
SELECT isv.*, sr.name as plugin_name, sr.slug as plugin_slug
FROM public.instance_services isv
JOIN public.service_registry sr ON sr.id = isv.management_plugin_id
WHERE isv.instance_id = $1
AND isv.management_plugin_id IS NOT NULL
"""


async def plugins_in_category(conn: asyncpg.Connection, category: str) -> list[dict[str, Any]]:
    """Approved, non-deleted services of one category."""
    return [dict(r) for r in await conn.fetch(PLUGINS_IN_CATEGORY, category)]


async def installed_plugins_for_space(conn: asyncpg.Connection, space_id: UUID) -> list[dict[str, Any]]:
    """The space's active, non-deleted installations joined to their services. Where the two
    tables share a column name the installation's value is the one kept (`si.*` comes last)."""
    return [dict(r) for r in await conn.fetch(INSTALLED_PLUGINS_FOR_SPACE, space_id)]


async def services_on_instance(conn: asyncpg.Connection, instance_id: UUID) -> list[dict[str, Any]]:
    """All services of an instance, newest discovered first."""
    return [dict(r) for r in await conn.fetch(SERVICES_ON_INSTANCE, instance_id)]


async def services_with_management_plugins(conn: asyncpg.Connection, instance_id: UUID) -> list[dict[str, Any]]:
    """The instance's managed services, with their plugin's `plugin_name` and `plugin_slug`."""
    return [dict(r) for r in await conn.fetch(SERVICES_WITH_MANAGEMENT_PLUGINS, instance_id)]
