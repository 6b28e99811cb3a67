"""What the proxy keeps in memory, read in bulk: live routes and installations.

Only rows a proxied request could use are loaded: services that are approved or deprecated and
not deleted, installations that are not deleted, and routes of those (installation routes only
while their installation is live).
"""

from __future__ import annotations

from typing import Any

import asyncpg

LIVE_ROUTES = """
SELECT r.id, r.service_id, s.slug AS service_slug, r.installation_id, r.route_path, r.method,
       r.target_url, s.api_base_url, r.auth_type, r.auth_config, r.rate_limit, r.rate_limit_window,
       COALESCE(r.cache_enabled, false) AS cache_enabled, r.cache_ttl, COALESCE(r.options, '{}') AS options,
       r.updated_at
FROM public.service_api_routes r
JOIN public.service_registry s ON s.id = r.service_id
LEFT JOIN public.service_installations si ON si.id = r.installation_id
WHERE s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
  AND (r.installation_id IS NULL OR si.deleted_at IS NULL)
"""

LIVE_INSTALLATIONS = """
SELECT si.id, si.space_id, si.service_id, s.slug AS service_slug, si.status,
       COALESCE(si.permissions, '{}') AS permissions, COALESCE(si.credentials, '{}') AS credentials,
       s.api_auth_type, COALESCE(s.api_auth_config, '{}') AS api_auth_config, si.updated_at
FROM public.service_installations si
JOIN public.service_registry s ON s.id = si.service_id
WHERE si.deleted_at IS NULL AND s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
"""


async def load(conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Routes and installations read in one REPEATABLE READ snapshot, so they agree."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        routes = [dict(r) for r in await conn.fetch(LIVE_ROUTES)]
        installations = [dict(r) for r in await conn.fetch(LIVE_INSTALLATIONS)]
    return routes, installations
