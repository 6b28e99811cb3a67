"""Rate limits exact across three gateway processes (`gateway serve`, default settings) on Redis
Sentinel and on Redis Cluster (issue 14, "Must show"): REDIS_URL `redis+sentinel://...` or
`redis+cluster://...`, a limit of 100 per 30 s, 600 concurrent requests over the three nodes in a
fresh window: exactly 100 pass, with no fallback decision. Each topology is started once for
this module (tests/redis_topologies.py) and stopped by its PIDs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.dev import services as devservices
from tests.e2e.test_rate_limits_across_nodes import Hits, local_fallbacks, start_gateway
from tests.factories import Factory
from tests.plugins import add_route, make_plugin
from tests.redis_topologies import ClusterTopology, SentinelTopology, start_cluster, start_sentinel

RUNS = 3


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    topology = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    topology = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(params=["sentinel", "cluster"])
def three_gateways(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[list[int]]:
    topology: SentinelTopology | ClusterTopology = request.getfixturevalue(request.param)
    ports = [devservices.free_port() for _ in range(3)]
    processes = [start_gateway(database_url, topology.url(), port, tmp_path / f"gateway-{port}.log")
                 for port in ports]
    try:
        deadline = time.monotonic() + 30
        for port, process in zip(ports, processes, strict=True):
            while not devservices.tcp_answers("127.0.0.1", port, 0.2):
                assert process.poll() is None, (tmp_path / f"gateway-{port}.log").read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


async def test_three_nodes_let_exactly_the_limit_through(three_gateways: list[int], make: Factory,
                                                         db: asyncpg.Pool, aiohttp_server: Any,
                                                         tmp_path: Path) -> None:
    hits = Hits()
    upstream = await aiohttp_server(hits.app)
    plugin = await make_plugin(db, make, str(upstream.make_url("")).rstrip("/"), routes={})
    for run in range(RUNS):
        await add_route(db, plugin.service_id, f"/run{run}/{{rest:path}}", "/{rest}", rate_limit=100,
                        rate_limit_window=30)
    await add_route(db, plugin.service_id, "/ping", "/ping")  # unlimited: tells when a node has loaded

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for port in three_gateways:
            deadline = time.monotonic() + 10
            ping = f"http://127.0.0.1:{port}{plugin.path('/ping')}"
            while (await session.get(ping, headers=plugin.member)).status != 200:
                assert time.monotonic() < deadline, "a node did not load the routes"
                await asyncio.sleep(0.1)
        fallbacks_before = [await local_fallbacks(session, port) for port in three_gateways]
        passed = []
        for run in range(RUNS):
            hits.count = 0
            urls = [f"http://127.0.0.1:{port}{plugin.path(f'/run{run}/x')}" for port in three_gateways]
            if time.time() % 30 > 20:  # all 600 inside one 30 s window
                await asyncio.sleep(30 - time.time() % 30 + 0.05)

            async def call(n: int, urls: list[str] = urls) -> int:
                async with session.get(urls[n % 3], headers=plugin.member) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(call(n) for n in range(600)))
            passed.append((statuses.count(200), statuses.count(429), hits.count))
        fallbacks_after = [await local_fallbacks(session, port) for port in three_gateways]
    redis_lines = [line for log in tmp_path.glob("gateway-*.log")
                   for line in log.read_text(errors="replace").splitlines() if "gateway.redis" in line]
    assert passed == [(100, 500, 100)] * RUNS, (
        f"fallbacks per node {fallbacks_before} -> {fallbacks_after}; " + "\n".join(redis_lines[:20]))
    assert fallbacks_after == fallbacks_before, redis_lines[:20]  # every decision came from Redis
