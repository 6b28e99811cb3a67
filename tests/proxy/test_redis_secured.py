"""`rediss+sentinel://` and `rediss+cluster://` with passwords (contract revision 3,
"Scale-out"): a Sentinel topology and a cluster on loopback that speak TLS only, with a password
on every data node and one of their own on the sentinels (`?sentinel_password=`), each started
once for this module (tests/redis_topologies.py) and stopped by their PIDs.

The limits, cache and purge work through them; a wrong password (or none) is an outage like any
other, with the fallback, and never an exception out of RedisLink or a password in a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.redis_link import RedisLink, RedisUnavailable
from tests.proxy.redis_scenarios import LinkFactory, cache_across_nodes, exact_limit, purge_everywhere
from tests.redis_topologies import ClusterTopology, Security, SentinelTopology, make_tls, start_cluster, start_sentinel

PASSWORD, SENTINEL_PASSWORD = "data-Pa55-w0rd", "sentinel-Pa55-w0rd"


@pytest.fixture(scope="module")
def security(tmp_path_factory: pytest.TempPathFactory) -> Security:
    return Security(PASSWORD, SENTINEL_PASSWORD, make_tls(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory, security: Security) -> Iterator[SentinelTopology]:
    topology = start_sentinel(tmp_path_factory.mktemp("sentinel"), security)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, security: Security) -> Iterator[ClusterTopology]:
    topology = start_cluster(tmp_path_factory.mktemp("cluster"), security)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> SentinelTopology | ClusterTopology:
    found: SentinelTopology | ClusterTopology = request.getfixturevalue(request.param)
    return found


@pytest.mark.parametrize("scenario", [exact_limit, cache_across_nodes, purge_everywhere],
                         ids=lambda scenario: scenario.__name__)
async def test_scenario(topology: SentinelTopology | ClusterTopology, links: LinkFactory, scenario: Any) -> None:
    url = topology.url()
    assert url.startswith("rediss+") and PASSWORD in url
    await scenario(links, url)


async def test_a_named_user(topology: SentinelTopology | ClusterTopology, links: LinkFactory) -> None:
    assert await links(topology.url(user="default")).ping()


async def test_wrong_passwords_are_an_outage_without_the_password_in_the_log(
        topology: SentinelTopology | ClusterTopology, links: LinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    wrong = [topology.url(password="not-the-password")]
    if isinstance(topology, SentinelTopology):
        wrong.append(topology.url(sentinel_password="not-the-sentinels"))
        wrong.append(topology.url().replace(f"sentinel_password={SENTINEL_PASSWORD}&", ""))  # none given
    caplog.set_level(logging.DEBUG, logger="gateway")
    for url in wrong:
        link = links(url)
        assert not await link.ping()
        with pytest.raises(RedisUnavailable):  # paused: the next call falls back at once
            await link.call(lambda r: r.get("anything"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "redis call failed" in logged
    assert PASSWORD not in logged and SENTINEL_PASSWORD not in logged and "not-the" not in logged
