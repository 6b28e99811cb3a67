"""What the proxy keeps in memory, read in bulk: live routes and installations.

Only rows a proxied request could use are loaded: services that are approved or deprecated and
not deleted, installations that are not deleted, and routes of those (installation routes only
while their installation is live).
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Across spaces, so through SECURITY DEFINER functions owned by gateway_reader (migration
# 20250101000900_roles_and_row_security.sql holds the queries).
LIVE_ROUTES = "SELECT * FROM public.gateway_live_routes()"
LIVE_INSTALLATIONS = "SELECT * FROM public.gateway_live_installations()"
LIVE_ASSIGNMENTS = "SELECT * FROM public.gateway_live_assignments()"  # migration 20250101001300


async def load(conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Routes, installations and management assignments read in one REPEATABLE READ snapshot,
    so they agree."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        routes = [dict(r) for r in await conn.fetch(LIVE_ROUTES)]
        installations = [dict(r) for r in await conn.fetch(LIVE_INSTALLATIONS)]
        assignments = [dict(r) for r in await conn.fetch(LIVE_ASSIGNMENTS)]
    return routes, installations, assignments
