"""The throwaway PostgreSQL and Redis (gateway/dev/services.py), with real processes: a cluster
asked for inside a directory its unprivileged user cannot enter still starts (elsewhere, the same
place on every run), stop() stops only it, and a tool that fails is reported in its own words as
one line, by the library and by `gateway demo`."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.dev import services
from gateway.dev.services import DevServiceError, LocalPostgres

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def closed_dir() -> Iterator[Path]:
    """A directory like root's home or a `mktemp -d` one: 0700, owned by us."""
    path = Path(tempfile.mkdtemp(prefix="pgw-closed-"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the server's unprivileged user can enter (0755), for cases about something else."""
    path = Path(tempfile.mkdtemp(prefix="pgw-open-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def local_postgres(data_dir: Path, port: int | None = None) -> LocalPostgres:
    bin_dir = services.postgres_bin_dir()
    assert bin_dir is not None, "these tests need PostgreSQL's binaries (apt-get install postgresql)"
    return LocalPostgres(data_dir, port or services.free_port(), bin_dir, services._unprivileged_user())


async def select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


async def test_cluster_asked_for_in_a_closed_directory_answers_and_stop_stops_only_it(
        closed_dir: Path, open_dir: Path) -> None:
    requested = closed_dir / "postgres"
    first = local_postgres(requested)
    other = local_postgres(open_dir / "postgres")
    try:
        first.start()
        other.start()
        assert await select_one(first.dsn) == 1 and await select_one(other.dsn) == 1
        conn = await asyncpg.connect(first.dsn)
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        await conn.close()
        if AS_ROOT:  # only root runs PostgreSQL as another user, who cannot enter closed_dir
            assert first.requested_dir == requested and first.data_dir != requested
            assert first.data_dir.name.startswith(services.RELOCATED_PREFIX)
            found = first.data_dir.stat()
            assert found.st_uid == services._user_ids(str(first.user))[0]
            assert stat.S_IMODE(found.st_mode) == 0o700
            assert not requested.exists(), "nothing is created where its user cannot reach"
            assert stat.S_IMODE(closed_dir.stat().st_mode) == 0o700, "the caller's directory stays closed"
            assert (first.data_dir / f".s.PGSQL.{first.port}.lock").exists(), "the socket lives beside the data"
            assert other.requested_dir is None and other.data_dir == open_dir / "postgres"
        else:
            assert first.requested_dir is None and first.data_dir == requested

        first.stop()
        assert not services.tcp_answers("127.0.0.1", first.port, 0.5)
        assert not (first.data_dir / "postmaster.pid").exists()
        assert await select_one(other.dsn) == 1, "stopping one cluster left the other alone"

        again = local_postgres(requested, first.port).start()  # a restart, as the demo's
        assert again.data_dir == first.data_dir, "the same place on every run"
        conn = await asyncpg.connect(again.dsn)
        assert await conn.fetchval("SELECT n FROM kept") == 42
        await conn.close()
    finally:
        first.stop(discard=True)
        other.stop(discard=True)
    assert not first.data_dir.exists()


async def test_a_data_dir_too_deep_for_a_unix_socket_still_starts(open_dir: Path) -> None:
    deep = open_dir / ("d" * 60) / ("e" * 60) / "postgres"
    deep.parent.mkdir(parents=True)
    for directory in (deep.parent, deep.parent.parent):
        directory.chmod(0o755)
    server = local_postgres(deep)
    try:
        server.start()
        assert server.data_dir == deep  # reachable: not moved, only without a Unix socket
        assert await select_one(server.dsn) == 1
    finally:
        server.stop(discard=True)


def test_initdb_failure_is_one_line_in_initdbs_words(open_dir: Path) -> None:
    occupied = open_dir / "postgres"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("not a cluster")
    with pytest.raises(DevServiceError) as failure:
        services.start_postgres(occupied)
    message = str(failure.value)
    assert message.startswith("initdb failed: ")
    assert "exists but is not empty" in message  # initdb's own text
    assert_one_line(message)


def test_pg_ctl_failure_carries_the_server_log_and_leaves_nothing_running(open_dir: Path,
                                                                          busy_port: int) -> None:
    server = local_postgres(open_dir / "postgres", busy_port)
    try:
        with pytest.raises(DevServiceError) as failure:
            server.start()
        message = str(failure.value)
        assert "pg_ctl could not start PostgreSQL" in message
        assert "could not create any TCP/IP sockets" in message  # from the server's log
        assert_one_line(message)
        assert not (server.data_dir / "postmaster.pid").exists()
    finally:
        server.stop(discard=True)


def test_a_data_dir_that_is_a_file_is_refused_in_one_line(open_dir: Path) -> None:
    not_a_dir = open_dir / "postgres"
    not_a_dir.write_text("")
    with pytest.raises(DevServiceError) as failure:
        services.start_postgres(not_a_dir)
    assert str(not_a_dir) in str(failure.value)
    assert_one_line(str(failure.value))


def test_redis_failure_is_one_line_in_its_words(busy_port: int) -> None:
    with pytest.raises(DevServiceError) as failure:
        services.start_redis(busy_port)
    message = str(failure.value)
    assert message.startswith("redis-server failed") and "Address already in use" in message
    assert_one_line(message)


def gateway_demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AIOHTTP_"))}
    env.update(DATABASE_URL="", REDIS_URL="")  # its own PostgreSQL, which is what fails here
    return subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(data_dir)],
                          check=False, env=env, capture_output=True, text=True, timeout=120, cwd="/")


def assert_one_gateway_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_demo_with_a_file_as_data_dir_says_so_in_one_line(open_dir: Path) -> None:
    not_a_dir = open_dir / "data"
    not_a_dir.write_text("")
    line = assert_one_gateway_line(gateway_demo(not_a_dir))
    assert str(not_a_dir) in line


def test_demo_whose_postgres_cannot_initdb_prints_initdbs_words_in_one_line(open_dir: Path) -> None:
    occupied = open_dir / "postgres"  # where the demo keeps its cluster, already holding something else
    occupied.mkdir()
    (occupied / "notes.txt").write_text("not a cluster")
    line = assert_one_gateway_line(gateway_demo(open_dir))
    assert line.startswith("gateway: initdb failed: ") and "exists but is not empty" in line
