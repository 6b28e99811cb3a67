"""Operator commands that read or change stored state: rotate-keys, routes."""

from __future__ import annotations

import asyncio
from typing import Any

from db import proxy_state
from db.encryption import KeyRing
from db.pool import create_pool
from db.rotate import rotate
from gateway.settings import Settings
from routing.loader import build_state


def rotate_keys(settings: Settings) -> int:
    keyring = KeyRing.parse(settings.encryption_keys)

    async def run() -> None:
        pool = await create_pool(settings.database_url, min_size=1, max_size=1, role=settings.db_role)
        try:
            async with pool.acquire() as conn:
                for result in await rotate(conn, keyring):
                    print(f"{result.table}: {result.rotated} re-encrypted under key '{keyring.primary}'")
        finally:
            await pool.close()

    asyncio.run(run())
    return 0


def print_routes(settings: Settings) -> int:
    async def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        pool = await create_pool(settings.database_url, min_size=1, max_size=1, role=settings.db_role)
        try:
            async with pool.acquire() as conn:
                return await proxy_state.load(conn)
        finally:
            await pool.close()

    routes, installations, assignments = asyncio.run(load())
    state = build_state(routes, installations, assignments)
    print(f"{state.table.size} routes, {len(state.installations)} installations")
    print(f"{'SERVICE':24} {'METHOD':7} {'PATH':32} {'SCOPE':10} {'LIMIT':12} {'CACHE':6} TARGET")
    for slug in state.table.services():
        for route in state.table.routes(slug):
            scope = "install" if route.installation_id else "service"
            limit = f"{route.rate_limit}/{route.rate_limit_window}s" if route.rate_limit else "-"
            cache = f"{route.cache_ttl}s" if route.cache_enabled and route.cache_ttl else "-"
            print(f"{slug:24} {route.method:7} {route.route_path:32} {scope:10} {limit:12} {cache:6} {route.target_url}")
    for rejected in state.table.rejected:
        print(f"left out: {rejected.route.service_slug} {rejected.route.route_path}: {rejected.reason}")
    return 0
