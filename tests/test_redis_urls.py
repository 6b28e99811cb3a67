"""REDIS_URL and GATEWAY_CACHE_REDIS_URL (contract revision 3, "Scale-out"): the forms read, and
the sentence a malformed one stops a command with (the variable named, no password, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.redis_link import RedisLink
from gateway.redis_urls import parse_redis_url, redacted
from gateway.settings import ConfigError, Settings

SECRET = "s3cr3t-Pa55"


def test_one_server_as_before() -> None:
    target = parse_redis_url("rediss://:pw@cache.internal:6380/2?ssl_cert_reqs=none")
    assert (target.kind, target.tls, target.db) == ("single", True, 2)
    assert parse_redis_url("redis://127.0.0.1:6379/0").kind == "single"
    assert parse_redis_url("unix:///run/redis.sock?db=1").db == 1


def test_sentinel_forms() -> None:
    target = parse_redis_url(f"redis+sentinel://app:{SECRET}@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3"
                             "?sentinel_password=other")
    assert target.kind == "sentinel" and not target.tls
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (target.master, target.db, target.username, target.password) == ("mymaster", 3, "app", SECRET)
    assert target.sentinel_password == "other"
    assert SECRET not in repr(target) and "other" not in repr(target)
    plain = parse_redis_url("rediss+sentinel://:p%40ss@s1:5000/primary?ssl_cert_reqs=none")
    assert (plain.tls, plain.password, plain.username, plain.db, plain.sentinel_password) == (True, "p@ss", None, 0, None)
    assert plain.options == {"ssl_cert_reqs": "none"}


def test_cluster_forms() -> None:
    target = parse_redis_url(f"rediss+cluster://{SECRET}@n1:7000,n2:7001")
    assert (target.kind, target.tls, target.hosts) == ("cluster", True, (("n1", 7000), ("n2", 7001)))
    assert target.password == SECRET
    assert parse_redis_url("redis+cluster://n1/").hosts == (("n1", 6379),)


def test_redacted_hides_every_password() -> None:
    assert redacted(f"redis+sentinel://u:{SECRET}@h:1/m?sentinel_password={SECRET}&ssl_cert_reqs=none") == \
        "redis+sentinel://u:***@h:1/m?sentinel_password=***&ssl_cert_reqs=none"
    assert redacted(f"redis://:{SECRET}@h/0") == "redis://:***@h/0"
    assert redacted("redis+cluster://h:1,h:2") == "redis+cluster://h:1,h:2"


MALFORMED = [
    ("http://cache:6379", "must be a URL of one of the forms"),
    ("cache:6379", "must be a URL of one of the forms"),
    ("redis://cache:port/0", "port that is not a number"),
    ("redis://cache:1,cache:2/0", "several hosts"),
    ("redis://cache/zero", "not a database number"),
    ("redis+sentinel://s1:26379,s2:26379", "names no master"),
    ("redis+sentinel://s1:26379/m/x", "database that is not a number"),
    ("redis+sentinel://s1:26379/m/0/extra", "longer than"),
    ("redis+sentinel://s1:26379,,s2/m", "empty one between commas"),
    ("redis+sentinel://s1:99999/m", "sentinel 1 that is not a number from 1 to 65535"),
    ("redis+cluster://n1:7000,n2:x", "cluster node 2"),
    ("redis+cluster://n1:7000/1", "only database 0"),
    ("redis+cluster://n1:7000?socket_timeout=1", "query option"),
    ("redis+cluster://[::1:7000", "IPv6"),
]


@pytest.mark.parametrize(("url", "reason"), MALFORMED)
@pytest.mark.parametrize("variable", ["REDIS_URL", "GATEWAY_CACHE_REDIS_URL"])
def test_malformed_urls_are_named(variable: str, url: str, reason: str) -> None:
    # A password in the URL, which the sentence must not repeat (unencoded `/` included).
    secret_url = url.replace("://", f"://user:{SECRET}@", 1)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: secret_url})
    message = str(raised.value)
    assert message.startswith(f"Config '{variable}' ") and reason in message
    assert SECRET not in message


def test_a_password_with_a_raw_slash() -> None:
    # Sentinel and Cluster URLs end the credentials at the last `@`: the password is read whole.
    assert parse_redis_url("redis+sentinel://user:pa/ss@s1:26379/m").password == "pa/ss"
    # A one-server URL (read by urllib as redis-py does) cannot hold it, and the sentence says
    # so without quoting any part of it.
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "redis://user:pa/ss3cr3t@cache:6379/0"})
    assert "ss3cr3t" not in str(raised.value) and "pa" not in str(raised.value).replace("path", "")


def test_cache_url_defaults_to_redis_url_and_both_are_kept() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis+cluster://n1:7000"})
    assert settings.cache_redis_url == settings.redis_url == "redis+cluster://n1:7000"
    settings = Settings.from_env({"REDIS_URL": "redis+cluster://n1:7000",
                                  "GATEWAY_CACHE_REDIS_URL": "redis+sentinel://s1/cache"})
    assert settings.cache_redis_url == "redis+sentinel://s1/cache"


async def test_the_link_builds_redis_pys_own_clients() -> None:
    """No server needed: the clients connect on first use."""
    cluster = RedisLink("redis+cluster://127.0.0.1:1,127.0.0.1:2", 0.05)
    sentinel = RedisLink(f"redis+sentinel://:{SECRET}@127.0.0.1:1/mymaster/2", 0.05)
    try:
        assert isinstance(cluster.client, RedisCluster) and cluster.cluster
        pool = sentinel.client.connection_pool
        assert type(pool).__name__ == "_BlockingSentinelPool" and pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == SECRET
        assert pool.max_connections == 64 and not sentinel.cluster
        # Nothing answers: each call falls back (RedisUnavailable), none raises anything else.
        assert not await cluster.ping() and not await sentinel.ping()
    finally:
        await cluster.close()
        await sentinel.close()


def test_serve_stops_with_the_sentence() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_URL", "REDIS_URL"))}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"], capture_output=True, text=True, timeout=60, cwd="/",
        env={**clean, "REDIS_URL": f"redis+sentinel://:{SECRET}@s1:26379,s2:26379"})
    assert result.returncode == 2
    assert result.stderr.startswith("gateway: Config 'REDIS_URL' names no master")
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
