"""Rate limits exact across gateway processes sharing one Redis, and safe when Redis goes away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway import metrics
from gateway.dev import services as devservices
from tests.conftest import ASSERTION_KEY, ENCRYPTION_KEYS, JWT_SECRET, gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import add_route, make_plugin, until_status

ROOT = Path(__file__).resolve().parents[2]


class Hits:
    def __init__(self) -> None:
        self.count = 0
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        return web.json_response({"ok": True})


METRICS_PORTS: dict[int, int] = {}  # gateway port → its metrics port


def start_gateway(database_url: str, redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    # Default settings: a burst of 200 requests per node keeps each node's event loop busy for
    # longer than GATEWAY_REDIS_TIMEOUT (50 ms) before it reads Redis's answers, and that time
    # must not count (gateway.redis_link.answer_within), or the node falls back mid-burst.
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "GATEWAY_PORT": str(port),
           "GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
           "GATEWAY_ASSERTION_KEY": ASSERTION_KEY, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
           "GATEWAY_METRICS_PORT": str(METRICS_PORTS.setdefault(port, devservices.free_port()))}
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def three_nodes(database_url: str, redis_url: str, logs: Path) -> Iterator[list[int]]:
    """Three `gateway serve` processes on one database and REDIS_URL: their ports, once they listen."""
    ports = [devservices.free_port() for _ in range(3)]
    processes = [start_gateway(database_url, redis_url, port, logs / f"gateway-{port}.log") for port in ports]
    try:
        deadline = time.monotonic() + 30
        for port, process in zip(ports, processes, strict=True):
            while not devservices.tcp_answers("127.0.0.1", port, 0.2):
                assert process.poll() is None, (logs / f"gateway-{port}.log").read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


@pytest.fixture
def three_gateways(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[list[int]]:
    with three_nodes(database_url, redis_url, tmp_path) as ports:
        yield ports


RUNS = 10


async def test_three_nodes_let_exactly_the_limit_through(three_gateways: list[int], make: Factory,
                                                         db: asyncpg.Pool, aiohttp_server: Any,
                                                         tmp_path: Path) -> None:
    """Limit 100 per 30 s, 600 concurrent requests over three nodes in a fresh window, default
    settings: exactly 100 pass, in each of RUNS runs (each on a route of its own: a fresh counter)."""
    await bursts_pass_exactly_the_limit(three_gateways, make, db, aiohttp_server, tmp_path, RUNS)


async def bursts_pass_exactly_the_limit(ports: list[int], make: Factory, db: asyncpg.Pool, aiohttp_server: Any,
                                        logs: Path, runs: int) -> None:
    """Limit 100 per 30 s, 600 concurrent requests over the nodes on `ports` in a fresh window:
    exactly 100 pass, in each of `runs` runs (each on a route of its own: a fresh counter), and
    no decision is taken without Redis."""
    hits = Hits()
    upstream = await aiohttp_server(hits.app)
    plugin = await make_plugin(db, make, str(upstream.make_url("")).rstrip("/"), routes={})
    for run in range(runs):
        await add_route(db, plugin.service_id, f"/run{run}/{{rest:path}}", "/{rest}", rate_limit=100,
                        rate_limit_window=30)
    await add_route(db, plugin.service_id, "/ping", "/ping")  # unlimited: tells when a node has loaded

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for port in ports:
            deadline = time.monotonic() + 10
            ping = f"http://127.0.0.1:{port}{plugin.path('/ping')}"
            while (await session.get(ping, headers=plugin.member)).status != 200:
                assert time.monotonic() < deadline, "a node did not load the routes"
                await asyncio.sleep(0.1)
        fallbacks_before = [await local_fallbacks(session, port) for port in ports]
        passed = []
        for run in range(runs):
            hits.count = 0
            urls = [f"http://127.0.0.1:{port}{plugin.path(f'/run{run}/x')}" for port in ports]
            # All 600 inside one 30 s window: start right after a boundary if less than 10 s remain.
            if time.time() % 30 > 20:
                await asyncio.sleep(30 - time.time() % 30 + 0.05)

            async def call(n: int, urls: list[str] = urls) -> int:
                async with session.get(urls[n % 3], headers=plugin.member) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(call(n) for n in range(600)))
            passed.append((statuses.count(200), statuses.count(429), hits.count))
        fallbacks_after = [await local_fallbacks(session, port) for port in ports]
    redis_lines = [line for log in logs.glob("gateway-*.log")
                   for line in log.read_text(errors="replace").splitlines() if "gateway.redis" in line]
    assert passed == [(100, 500, 100)] * runs, (
        f"fallbacks per node {fallbacks_before} -> {fallbacks_after}; " + "\n".join(redis_lines[:20]))
    assert fallbacks_after == fallbacks_before, redis_lines[:20]  # every decision came from Redis


async def local_fallbacks(session: aiohttp.ClientSession, port: int) -> float:
    """gateway_rate_limit_fallback_total{mode="local"} of the node listening on `port`."""
    metrics_port = METRICS_PORTS[port]
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('gateway_rate_limit_fallback_total{mode="local"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def own_redis() -> AsyncIterator[devservices.LocalRedis]:
    server = devservices.start_redis()
    yield server
    server.stop()


async def test_redis_outage_during_load(own_redis: devservices.LocalRedis, database_url: str, make: Factory,
                                        db: asyncpg.Pool, aiohttp_server: Any) -> None:
    hits = Hits()
    upstream = await aiohttp_server(hits.app)
    settings = make_settings(database_url, redis_url=own_redis.url, redis_timeout=0.05)
    fallback_before = metrics.REGISTRY.get_sample_value("gateway_rate_limit_fallback_total", {"mode": "local"}) or 0
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, str(upstream.make_url("")).rstrip("/"), routes={})
        await add_route(db, plugin.service_id, "/{rest:path}", "/{rest}", rate_limit=1_000_000, rate_limit_window=3600)
        await until_status(client, plugin.path("/x"), plugin.member, 200)

        slowest = 0.0
        statuses: list[int] = []
        stop = asyncio.Event()

        async def worker() -> None:
            nonlocal slowest
            while not stop.is_set():
                started = time.monotonic()
                response = await client.get(plugin.path("/x"), headers=plugin.member)
                await response.read()
                slowest = max(slowest, time.monotonic() - started)
                statuses.append(response.status)

        workers = [asyncio.create_task(worker()) for _ in range(10)]
        await asyncio.sleep(0.5)
        own_redis.stop()  # Redis goes away in the middle of the run
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)

        assert statuses and set(statuses) == {200}  # `local` mode: answered, limited per process
        assert slowest < 1.0  # no request hung on Redis (timeout 0.05 s)
        fallback = metrics.REGISTRY.get_sample_value("gateway_rate_limit_fallback_total", {"mode": "local"}) or 0
        assert fallback > fallback_before

        restarted = devservices.start_redis(own_redis.port)  # back on the same address
        try:
            await asyncio.sleep(1.2)  # past the pause after the last failure
            response = await client.get(plugin.path("/x"), headers=plugin.member)
            assert response.status == 200
            import redis.asyncio as redis

            probe = redis.Redis.from_url(own_redis.url)
            try:
                assert await probe.keys("pgw:rl:*")  # counted in Redis again
            finally:
                await probe.aclose()
        finally:
            restarted.stop()
