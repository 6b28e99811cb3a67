"""The seed's common queries (db/queries.py) on real rows, including the rows each must leave out."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from uuid import UUID

import asyncpg

from db import queries
from tests.factories import Factory

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


async def service(db: asyncpg.Pool, name: str, *, category: str = "business-intelligence",
                  status: str = "approved", deleted: bool = False) -> UUID:
    service_id: UUID = await db.fetchval(
        "INSERT INTO service_registry (name, slug, version, provider, category, status, deleted_at) "
        "VALUES ($1, $2, '1.0', 'Acme', $3, $4, CASE WHEN $5 THEN NOW() END) RETURNING id",
        name, f"{name}-{uuid.uuid4().hex[:6]}", category, status, deleted)
    return service_id


async def install(db: asyncpg.Pool, service_id: UUID, space: UUID, *, status: str = "active",
                  deleted: bool = False) -> UUID:
    installation: UUID = await db.fetchval(
        "INSERT INTO service_installations (service_id, space_id, status, config, deleted_at) "
        "VALUES ($1, $2, $3, '{\"theme\": \"dark\"}', CASE WHEN $4 THEN NOW() END) RETURNING id",
        service_id, space, status, deleted)
    return installation


async def instance(db: asyncpg.Pool, space: UUID) -> UUID:
    instance_id: UUID = await db.fetchval(
        "INSERT INTO infrastructure_instances (name, type, host, space_id) VALUES ('i', 'vm', 'h', $1) RETURNING id",
        space)
    return instance_id


async def instance_service(db: asyncpg.Pool, instance_id: UUID, name: str, hours: int,
                           plugin: UUID | None = None) -> UUID:
    service_id: UUID = await db.fetchval(
        "INSERT INTO instance_services (instance_id, name, type, discovered_at, management_plugin_id) "
        "VALUES ($1, $2, 'docker_container', $3, $4) RETURNING id",
        instance_id, name, T0 + timedelta(hours=hours), plugin)
    return service_id


async def test_plugins_in_category(db: asyncpg.Pool) -> None:
    wanted = {await service(db, "bi-a"), await service(db, "bi-b")}
    await service(db, "bi-pending", status="pending")
    await service(db, "bi-deprecated", status="deprecated")
    await service(db, "bi-deleted", deleted=True)
    await service(db, "other", category="service-management")
    async with db.acquire() as conn:
        rows = await queries.plugins_in_category(conn, "business-intelligence")
        assert {r["id"] for r in rows} == wanted
        assert all(r["status"] == "approved" and r["deleted_at"] is None for r in rows)
        assert await queries.plugins_in_category(conn, "no-such-category") == []


async def test_installed_plugins_for_space(db: asyncpg.Pool, make: Factory) -> None:
    space, other_space = await make.space(), await make.space()
    plugin = await service(db, "reports", category="installed-test")
    live = await install(db, plugin, space)
    await install(db, await service(db, "inactive", category="installed-test"), space, status="inactive")
    await install(db, await service(db, "uninstalled", category="installed-test"), space, deleted=True)
    await install(db, await service(db, "elsewhere", category="installed-test"), other_space)
    async with db.acquire() as conn:
        [row] = await queries.installed_plugins_for_space(conn, space)
    # Columns both tables have are the installation's; the service is named by service_id.
    assert row["id"] == live and row["service_id"] == plugin and row["space_id"] == space
    assert row["name"].startswith("reports") and row["slug"].startswith("reports")
    assert row["status"] == "active" and row["config"] == {"theme": "dark"}


async def test_services_on_instance(db: asyncpg.Pool, make: Factory) -> None:
    space = await make.space()
    target, other = await instance(db, space), await instance(db, space)
    old = await instance_service(db, target, "old", 1)
    new = await instance_service(db, target, "new", 5)
    middle = await instance_service(db, target, "middle", 3)
    await instance_service(db, other, "elsewhere", 9)
    async with db.acquire() as conn:
        rows = await queries.services_on_instance(conn, target)
    assert [r["id"] for r in rows] == [new, middle, old]


async def test_services_with_management_plugins(db: asyncpg.Pool, make: Factory) -> None:
    space = await make.space()
    target, other = await instance(db, space), await instance(db, space)
    plugin = await service(db, "docker-manager", category="service-management")
    managed = await instance_service(db, target, "managed", 1, plugin)
    await instance_service(db, target, "unmanaged", 2)
    await instance_service(db, other, "managed-elsewhere", 3, plugin)
    async with db.acquire() as conn:
        [row] = await queries.services_with_management_plugins(conn, target)
    slug = await db.fetchval("SELECT slug FROM service_registry WHERE id = $1", plugin)
    assert row["id"] == managed and row["management_plugin_id"] == plugin
    assert (row["plugin_name"], row["plugin_slug"]) == ("docker-manager", slug)
