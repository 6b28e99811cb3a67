"""The benchmark's databases and what is in them: the host platform's rows through the tests'
Factory, the plugin through the gateway's own API (as a vendor, a platform admin and a space owner
would), and the 10,000-routes table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from auth.jwt import issue_token
from gateway.dev import services as devservices
from tests.factories import Factory

PLUGIN_SLUG = "bench-reports"
LIMITED_ROUTE = "/limited/{id}"        # rate_limit BENCH_RATE_LIMIT per BENCH_RATE_WINDOW s: never reached
CACHED_ROUTE = "/cached/{id}"          # cache_enabled, cache_ttl BENCH_CACHE_TTL: every measured request HITs
BENCH_RATE_LIMIT = 1_000_000_000
BENCH_RATE_WINDOW = 3600
BENCH_CACHE_TTL = 3600
# The Redis-backed gateway's routes besides the benchmarked /reports/{id} (bodies of POST .../routes).
LIMITED_AND_CACHED_ROUTES: tuple[dict[str, Any], ...] = (
    {"route_path": LIMITED_ROUTE, "method": "GET", "target_url": "/reports/{id}",
     "rate_limit": BENCH_RATE_LIMIT, "rate_limit_window": BENCH_RATE_WINDOW},
    {"route_path": CACHED_ROUTE, "method": "GET", "target_url": "/reports/{id}",
     "cache_enabled": True, "cache_ttl": BENCH_CACHE_TTL},
)
EXTRA_SERVICES = 99
EXTRA_ROUTES_PER_SERVICE = 100
EXTRA_ROUTES_SAME_SERVICE = 99  # 99 * 100 + 99 + the benchmarked route = 10,000
TARGET_ROUTES = 1 + EXTRA_SERVICES * EXTRA_ROUTES_PER_SERVICE + EXTRA_ROUTES_SAME_SERVICE


def database_url_answers() -> str:
    dsn = os.environ.get("DATABASE_URL", "")
    return dsn if dsn and devservices.postgres_answers(dsn) else ""


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Seed:
    vendor: str = ""
    admin: str = ""
    owner: str = ""
    member: str = ""
    space: str = ""
    service_id: str = ""
    installation_id: str = ""
    routes: dict[str, str] = field(default_factory=dict)  # route_path → route id


async def seed_host_rows(dsn: str, jwt_secret: str) -> Seed:
    """The rows the host platform owns: users, a space, its owner and a plain member."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        make = Factory(pool, jwt_secret)
        users = {role: await make.user(f"bench-{role}@bench.local") for role in ("vendor", "admin", "owner", "member")}
        space = await make.space("Bench space")
        for role in ("owner", "member"):
            await make.member(space, role, user_id=users[role])
        return Seed(vendor=str(users["vendor"]), admin=str(users["admin"]), owner=str(users["owner"]),
                    member=str(users["member"]), space=str(space))
    finally:
        await pool.close()


async def register_through_api(base: str, secret: str, seed: Seed, upstream: str,
                               extra_routes: tuple[dict[str, Any], ...] = ()) -> None:
    """Vendor registers the plugin and its route, a platform admin approves it, the space owner
    installs it with an api_key credential: the same calls as tests/e2e/test_proxy_flow.py.
    `extra_routes`: more routes of the same plugin (bodies of POST .../routes), registered alike."""
    def auth(user: str, admin: bool = False) -> dict[str, str]:
        token = issue_token(secret, user, roles=["platform_admin"] if admin else None, lifetime_seconds=3600)
        return {"Authorization": f"Bearer {token}"}

    async with aiohttp.ClientSession(base) as http:
        async def call(method: str, path: str, headers: dict[str, str], body: dict[str, Any], expect: int) -> Any:
            async with http.request(method, path, json=body, headers=headers) as response:
                text = await response.text()
                if response.status != expect:
                    raise RuntimeError(f"{method} {path} answered {response.status}: {text}")
                return json.loads(text)

        service = await call("POST", "/api/v1/services", auth(seed.vendor), {
            "name": "Bench reports", "slug": PLUGIN_SLUG, "version": "1.0", "provider": "Bench",
            "api_base_url": upstream + "/v1", "api_auth_type": "api_key",
            "api_auth_config": {"header_name": "X-Plugin-Key"}}, 201)
        seed.service_id = service["id"]
        for route in ({"route_path": "/reports/{id}", "method": "GET", "target_url": "/reports/{id}"},
                      *extra_routes):
            created = await call("POST", f"/api/v1/services/{seed.service_id}/routes", auth(seed.vendor), route, 201)
            seed.routes[route["route_path"]] = created["id"]
        await call("PUT", f"/api/v1/services/{seed.service_id}/status", auth(seed.admin, admin=True),
                   {"status": "approved"}, 200)
        installation = await call("POST", f"/api/v1/spaces/{seed.space}/installations", auth(seed.owner),
                                  {"service_id": seed.service_id,
                                   "credentials": {"api_key": "bench-plugin-secret"}}, 201)
        seed.installation_id = installation["id"]


async def insert_extra_routes(dsn: str, seed: Seed, upstream: str) -> int:
    """9,999 more approved routes, straight into the tables: 99 other services with 100 routes
    each, and 99 more routes of the benchmarked service, some beside and below its route.
    Plain SQL in one transaction rather than db/routes.py's one-row calls: the gateway is then
    notified once, so the phase times one insert and one reload."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            services = await conn.fetch(
                """INSERT INTO service_registry (name, slug, version, provider, status, api_base_url,
                                                 api_auth_type, api_auth_config)
                   SELECT 'Bench extra ' || i, 'bench-extra-' || lpad(i::text, 3, '0'), '1.0', 'Bench',
                          'approved', $1, 'api_key', '{"header_name": "X-Plugin-Key"}'::jsonb
                   FROM generate_series(1, $2::int) AS i RETURNING id""",
                upstream + "/v1", EXTRA_SERVICES)
            rows: list[tuple[str, str, str, str]] = []
            for service in services:
                for j in range(EXTRA_ROUTES_PER_SERVICE):
                    path, target = [
                        (f"/r{j}", f"/r{j}"),
                        (f"/r{j}/{{id}}", f"/r{j}/{{id}}"),
                        (f"/r{j}/{{id}}/detail", f"/r{j}/{{id}}/detail"),
                        (f"/r{j}/files/{{rest:path}}", f"/r{j}/files/{{rest}}"),
                    ][j % 4]
                    rows.append((str(service["id"]), path, "GET" if j % 5 else "POST", target))
            for j in range(EXTRA_ROUTES_SAME_SERVICE):
                path, method = [
                    (f"/reports/{{id}}/v{j}", "GET"),  # below the benchmarked template
                    (f"/reports/s{j}", "GET"),         # static siblings of its parameter
                    (f"/x{j}/{{id}}", "POST"),
                ][j % 3]
                rows.append((seed.service_id, path, method, path))
            await conn.execute(
                """INSERT INTO service_api_routes (service_id, route_path, method, target_url)
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])""",
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return int(await conn.fetchval("SELECT count(*) FROM service_api_routes"))
    finally:
        await conn.close()
