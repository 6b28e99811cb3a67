"""Active health checks (contract revision 3, "Plugin health") against real upstreams on loopback:
verdicts into the seed's columns, the lease, and a healthy verdict closing breakers everywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient


from gateway.proxy.breaker import Breakers
from gateway.proxy.probes import LEASE_SECONDS, REFRESH_INTERVALS, TICK_SECONDS, HealthProber, _Track
from gateway.proxy.runtime import PROXY
from gateway.redis_link import RedisLink
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from routing.loader import Installation
from tests.plugins import Plugin, make_plugin, until_status

CHECK = {"path": "/health", "interval_seconds": 5, "timeout_seconds": 1, "healthy_threshold": 1,
         "unhealthy_threshold": 1}


class Upstream:
    def __init__(self) -> None:
        self.healthy = True
        self.probes: list[str] = []  # the credential header each probe carried
        self.app = web.Application()
        self.app.router.add_get("/health", self.health)
        self.app.router.add_route("*", "/{tail:.*}", self.other)

    async def health(self, request: web.Request) -> web.Response:
        self.probes.append(request.headers.get("X-Plugin-Key", ""))
        return web.json_response({"ok": self.healthy}, status=200 if self.healthy else 500)

    async def other(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, status=200 if self.healthy else 502)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    yield up, str(server.make_url("")).rstrip("/")


async def probed_plugin(db: asyncpg.Pool, make: Factory, url: str, check: dict[str, Any] = CHECK) -> Plugin:
    plugin = await make_plugin(db, make, url)
    await db.execute("UPDATE service_registry SET capabilities = $2 WHERE id = $1",
                     plugin.service_id, {"health_check": check})
    return plugin


async def until_row(db: asyncpg.Pool, installation: UUID, status: str, within: float) -> asyncpg.Record:
    deadline = time.monotonic() + within
    while True:
        row = await db.fetchrow("SELECT health_status, last_health_check, updated_at, status "
                                "FROM service_installations WHERE id = $1", installation)
        if row["health_status"] == status:
            return row
        assert time.monotonic() < deadline, f"health_status stayed {row['health_status']!r}"
        await asyncio.sleep(0.2)


async def test_verdicts_reach_the_seeds_columns(client: TestClient, upstream: tuple[Upstream, str],
                                                make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await probed_plugin(db, make, url)
    await until_status(client, plugin.path("/x"), plugin.member, 200)
    edited = await db.fetchval("SELECT updated_at FROM service_installations WHERE id = $1", plugin.installation_id)
    healthy = await until_row(db, plugin.installation_id, "healthy", within=CHECK["interval_seconds"] * 2 + 3)
    assert healthy["last_health_check"] is not None and healthy["status"] == "active"
    assert healthy["updated_at"] == edited  # a verdict is bookkeeping, not an edit
    assert up.probes and set(up.probes) == {f"secret-{plugin.slug}"}  # the installation's credential
    up.healthy = False
    unhealthy = await until_row(db, plugin.installation_id, "unhealthy", within=CHECK["interval_seconds"] * 1.2 + 3)
    assert unhealthy["status"] == "active"  # a probe never changes the installation's own status
    assert unhealthy["last_health_check"] > healthy["last_health_check"]


async def test_invalid_health_checks_are_refused(client: TestClient, make: Factory) -> None:
    admin = await make.admin()
    for check, named in (({"interval_seconds": 30}, "health_check.path"),
                         ({"path": "/h", "interval_seconds": 2}, "health_check.interval_seconds"),
                         ({"path": "/h", "interval_seconds": 10, "timeout_seconds": 10}, "timeout_seconds"),
                         ({"path": "/h", "healthy_threshold": 11}, "health_check.healthy_threshold")):
        response = await client.post("/api/v1/services", headers=admin, json={
            "name": "H", "slug": "h-invalid", "version": "1", "provider": "p", "capabilities": {"health_check": check}})
        assert response.status == 422 and named in await response.text(), await response.text()


async def test_one_prober_at_a_time_and_another_takes_over(redis_url: str, database_url: str) -> None:
    """Two nodes' probers compete for the lease: one holds it; when it stops, the other has it
    within LEASE_SECONDS plus a tick."""
    from db.pool import Database
    from routing.loader import StateLoader

    links = [RedisLink(redis_url, 0.5) for _ in range(2)]
    database = Database(database_url)
    probers = [HealthProber(StateLoader(database), database, link, None, None, Breakers(5, 30))  # type: ignore[arg-type]
               for link in links]
    try:
        held = [await p._hold_lease() for p in probers]
        assert sorted(held) == [False, True]
        holder, other = (probers[0], probers[1]) if held[0] else (probers[1], probers[0])
        assert await holder._hold_lease() and not await other._hold_lease()  # renewal keeps it
        await holder.close()  # a node stopping gives the lease back; a dead one lets it expire
        assert await other._hold_lease()
        # A killed holder: nothing released, so the lease expires.
        other_dead, third = other, HealthProber(StateLoader(database), database, RedisLink(redis_url, 0.5), None,  # type: ignore[arg-type]
                                                None, Breakers(5, 30))  # type: ignore[arg-type]
        links.append(third.redis)
        started = time.monotonic()
        while not await third._hold_lease():
            assert time.monotonic() - started < LEASE_SECONDS + TICK_SECONDS + 1
            await asyncio.sleep(0.2)
        assert other_dead.holding  # it still thinks so: its next renewal will find out
        assert not await other_dead._hold_lease()
    finally:
        for link in links:
            await link.close()


async def test_a_healthy_verdict_closes_the_breakers_on_every_node(
        database_url: str, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    settings = make_settings(database_url, breaker_failures=2, breaker_open_seconds=3600)
    async with gateway_client(settings) as node:
        plugin = await make_plugin(db, make, url)
        await until_status(node, plugin.path("/x"), plugin.member, 200)
        up.healthy = False
        for _ in range(2):
            await (await node.get(plugin.path("/x"), headers=plugin.member)).read()
        assert (await node.get(plugin.path("/x"), headers=plugin.member)).status == 503
        up.healthy = True
        # Another node's prober writes the verdicts (here: the function it calls, straight).
        at = "now()"
        await db.execute(f"SELECT gateway_record_health($1::uuid[], ARRAY['unhealthy'], {at})", [plugin.installation_id])
        await db.execute(f"SELECT gateway_record_health($1::uuid[], ARRAY['healthy'], {at})", [plugin.installation_id])
        await until_status(node, plugin.path("/x"), plugin.member, 200, within=3)
        assert not node.app[PROXY].breakers.is_open((plugin.installation_id, f"http://127.0.0.1:{up_port(url)}"))


def up_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_two_nodes_probe_each_installation_once_per_interval_in_total(
        redis_url: str, database_url: str, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    settings = make_settings(database_url, redis_url=redis_url)
    async with gateway_client(settings), gateway_client(settings):  # two nodes sharing Redis and the database
        await probed_plugin(db, make, url)
        deadline = time.monotonic() + CHECK["interval_seconds"] + LEASE_SECONDS + TICK_SECONDS + 5
        while not up.probes:  # the first verdict (a lease left by an earlier test expires first)
            assert time.monotonic() < deadline, "no probe came"
            await asyncio.sleep(0.1)
        first = len(up.probes)
        await asyncio.sleep(2 * CHECK["interval_seconds"] + 1)
        probes = len(up.probes) - first
    # One node probes at a time: two (or, with the jitter, three) in two intervals; both nodes
    # probing would make four or more.
    assert 1 <= probes <= 3, probes


def test_a_flapping_upstream_never_flips_the_verdict_nor_writes_on_every_probe() -> None:
    now = [0.0]
    prober = HealthProber(None, None, None, None, None, Breakers(5, 30), clock=lambda: now[0])  # type: ignore[arg-type]
    installation = Installation(uuid4(), uuid4(), uuid4(), "svc", "active", "member", {})
    config = {**CHECK, "healthy_threshold": 2, "unhealthy_threshold": 3}
    track = _Track(due=0.0, verdict=None)
    writes = []
    for probe in range(40):  # up, down, up, down...: never two alike in a row
        now[0] = probe * config["interval_seconds"]
        prober._judge(installation, config, track, ok=probe % 2 == 0)
        writes.append(prober._pending.pop(installation.id, None))
    assert writes == [None] * 40  # no verdict at all: neither threshold is ever reached
    for probe in range(40, 80):  # up twice: healthy; then flapping again keeps it
        now[0] = probe * config["interval_seconds"]
        prober._judge(installation, config, track, ok=probe < 42 or probe % 2 == 0)
        writes.append(prober._pending.pop(installation.id, None))
    written = [(i, w) for i, w in enumerate(writes) if w is not None]
    assert written[0] == (41, "healthy") and {w for _, w in written} == {"healthy"}
    # Afterwards only the periodic refresh of last_health_check, not one write per probe.
    assert len(written) <= 1 + 40 // REFRESH_INTERVALS
