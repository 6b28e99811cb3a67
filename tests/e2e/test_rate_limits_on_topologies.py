"""Rate limits exact across three gateway processes (`gateway serve`, default settings) on Redis
Sentinel and on Redis Cluster (issue 14, "Must show"): REDIS_URL `redis+sentinel://...` or
`redis+cluster://...`, a limit of 100 per 30 s, 600 concurrent requests over the three nodes in a
fresh window: exactly 100 pass, with no fallback decision. Each topology is started once for
this module (tests/redis_topologies.py) and stopped by its PIDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.test_rate_limits_across_nodes import bursts_pass_exactly_the_limit, three_nodes
from tests.factories import Factory
from tests.redis_topologies import ClusterTopology, SentinelTopology

RUNS = 3


@pytest.fixture(params=["sentinel", "cluster"])
def three_gateways(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[list[int]]:
    topology: SentinelTopology | ClusterTopology = request.getfixturevalue(request.param)
    with three_nodes(database_url, topology.url(), tmp_path) as ports:
        yield ports


async def test_three_nodes_let_exactly_the_limit_through(three_gateways: list[int], make: Factory,
                                                         db: asyncpg.Pool, aiohttp_server: Any,
                                                         tmp_path: Path) -> None:
    await bursts_pass_exactly_the_limit(three_gateways, make, db, aiohttp_server, tmp_path, RUNS)
