"""`gateway serve` as real processes (gunicorn's arbiter and the gateway's workers): graceful
drain on SIGTERM, a reload (SIGHUP) under load, a SIGHUP with broken code or settings that
leaves the old workers serving, and one /metrics scrape covering every worker.

Each test starts its own gateway (`python -m gateway.cli serve`) and stops only that process
(and, through it, its workers). The upstream runs on this test's event loop, so nothing here
blocks the loop while a gateway is waiting on it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import DRAIN_SECONDS, ROOT, StartGateway
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status



class Upstream:
    """A loopback plugin upstream: /slow answers after 2 s, anything else at once."""

    def __init__(self) -> None:
        self.slow_started = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/{tail:.*}", self.fast)

    async def slow(self, request: web.Request) -> web.Response:
        self.slow_started.set()
        await asyncio.sleep(2)
        return web.json_response({"slow": True})

    async def fast(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def children(pid: int) -> set[int]:
    """Live child processes of `pid`, from /proc/<pid>/stat (no test hook in the gateway)."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(stat.parent.name))
    return found


async def wait_children(pid: int, count: int, within: float = 10.0) -> set[int]:
    deadline = time.monotonic() + within
    while len(found := children(pid)) != count:
        assert time.monotonic() < deadline, f"{pid} has children {found}, expected {count}"
        await asyncio.sleep(0.05)
    return found


async def arrange(db: asyncpg.Pool, make: Factory, aiohttp_server: Any) -> tuple[Upstream, Plugin]:
    """The plugin exists before the gateway starts: every worker loads it before it serves."""
    upstream = Upstream()
    server = await aiohttp_server(upstream.app)
    return upstream, await make_plugin(db, make, str(server.make_url("")).rstrip("/"))


async def idle_keepalive_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has been answered once and is kept alive, idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return reader, writer


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_the_request_in_flight_finish(workers: int, start_gateway: StartGateway,
                                                         db: asyncpg.Pool, make: Factory,
                                                         aiohttp_server: Any) -> None:
    upstream, plugin = await arrange(db, make, aiohttp_server)
    gateway = await start_gateway(workers)
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]

        async def slow_call() -> tuple[int, Any]:
            async with session.get(plugin.path("/slow"), headers=plugin.member) as response:
                return response.status, await response.json()

        slow = asyncio.create_task(slow_call())
        await asyncio.wait_for(upstream.slow_started.wait(), 10)
        idle, idle_writer = await idle_keepalive_connection(gateway.port)
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        # An idle keep-alive connection is closed at once, not at the end of the drain.
        try:
            assert await asyncio.wait_for(idle.read(), 1.5) == b""
        finally:
            idle_writer.close()
            await idle_writer.wait_closed()
        await asyncio.sleep(0.3)
        # New connections are refused once SIGTERM arrived (the listening socket is closed),
        # while the request in flight drains.
        with pytest.raises(aiohttp.ClientConnectorError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(f"{gateway.url}/healthz")
        assert await asyncio.wait_for(slow, 10) == (200, {"slow": True})
        code = await gateway.wait_exit(DRAIN_SECONDS)
    assert code == 0, gateway.logs()
    assert time.monotonic() - signalled < DRAIN_SECONDS  # it did not wait out the drain time
    assert "gateway stopped" in gateway.output()  # the arbiter's exit hook ran: the drain ended in time


async def test_rolling_restart_under_load_fails_no_request(start_gateway: StartGateway, db: asyncpg.Pool,
                                                           make: Factory, aiohttp_server: Any) -> None:
    _, plugin = await arrange(db, make, aiohttp_server)
    gateway = await start_gateway(2)
    before = await wait_children(gateway.process.pid, 2)
    statuses: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(base_url=gateway.url, connector=aiohttp.TCPConnector(limit=0)) as session:
        await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]

        async def client() -> None:
            while not stop.is_set():
                try:
                    async with session.get(plugin.path("/fast"), headers=plugin.member) as response:
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

        clients = [asyncio.create_task(client()) for _ in range(20)]
        try:
            await asyncio.sleep(1.0)
            served_before = len(statuses)
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while True:  # both workers replaced, the old ones drained and gone
                now = children(gateway.process.pid)
                if len(now) == 2 and not now & before:
                    break
                assert time.monotonic() < deadline, f"workers {before} -> {now}\n{gateway.logs()}"
                assert gateway.process.returncode is None, gateway.logs()
                await asyncio.sleep(0.1)
            served_during = len(statuses) - served_before
            await asyncio.sleep(1.0)  # and the new workers carry the load
        finally:
            stop.set()
            await asyncio.gather(*clients)
    assert not failures, (len(failures), len(statuses), failures[:3])
    assert set(statuses) == {200}
    assert served_during > 100, served_during


def requests_in(text: str, slug: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "gateway_requests_total" and sample.labels.get("service") == slug)


def requests_by_worker(metrics_dir: Path, slug: str) -> dict[int, float]:
    """gateway_requests_total of the plugin per worker, from each worker's own file."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        counts[pid] = sum(sample.value for metric in MultiProcessCollector.merge([str(path)])
                          for sample in metric.samples
                          if sample.name == "gateway_requests_total" and sample.labels.get("service") == slug)
    return counts


async def test_one_scrape_counts_the_requests_of_every_worker(start_gateway: StartGateway, db: asyncpg.Pool,
                                                               make: Factory, aiohttp_server: Any,
                                                               tmp_path: Path) -> None:
    _, plugin = await arrange(db, make, aiohttp_server)
    gateway = await start_gateway(2)
    workers = await wait_children(gateway.process.pid, 2)
    (metrics_dir,) = tmp_path.glob("gateway-metrics-*")
    metrics_url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"

    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as scraper:
        async def scrape() -> str:
            async with scraper.get(metrics_url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                return await response.text()

        async def settled(expected: float) -> str:  # a worker counts a request as it answers
            deadline = time.monotonic() + 5
            while (requests_in(text := await scrape(), plugin.slug)) != expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return text

        async def steady() -> float:
            """The polling above, once counted: a worker counts a request after answering it,
            so a scrape right after the last answer may not see it yet."""
            deadline, last = time.monotonic() + 5, -1.0
            while time.monotonic() < deadline:
                now = requests_in(await scrape(), plugin.slug)
                if now >= 1 and now == last:
                    return now
                last = now
                await asyncio.sleep(0.2)
            return last

        baseline = await steady()
        per_worker_before = requests_by_worker(metrics_dir, plugin.slug)

        # A new connection per request, 20 at a time, until both workers have answered some:
        # which worker accepts a connection from the shared queue is up to the kernel.
        made = 0
        async with aiohttp.ClientSession(base_url=gateway.url,
                                         connector=aiohttp.TCPConnector(force_close=True)) as callers:
            async def call() -> int:
                async with callers.get(plugin.path("/fast"), headers=plugin.member) as response:
                    await response.read()
                    return response.status

            for _ in range(50):
                statuses = await asyncio.gather(*(call() for _ in range(20)))
                made += len(statuses)
                assert set(statuses) == {200}
                counts = requests_by_worker(metrics_dir, plugin.slug)
                served = {pid for pid in workers if counts.get(pid, 0) > per_worker_before.get(pid, 0)}
                if served == workers:
                    break
            assert served == workers, f"only {served} of {workers} answered in {made} requests"

        text = await settled(baseline + made)
        assert requests_in(text, plugin.slug) == baseline + made  # one scrape, every worker's requests
        counts = requests_by_worker(metrics_dir, plugin.slug)
        assert sum(counts.values()) == baseline + made
        families = {family.name: family for family in text_string_to_metric_families(text)}  # parses
        routes = families["gateway_route_table_routes"].samples
        assert len(routes) == 1 and routes[0].value >= 1 and "pid" not in routes[0].labels
        durations = [s for s in families["gateway_request_duration_seconds"].samples
                     if s.name == "gateway_request_duration_seconds_count" and s.labels["service"] == plugin.slug]
        assert [s.value for s in durations] == [baseline + made]
        if promtool := shutil.which("promtool"):  # what CI runs on the exposition
            checker = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=PIPE, stdout=PIPE,
                                                           stderr=asyncio.subprocess.STDOUT)
            output, _ = await asyncio.wait_for(checker.communicate(text.encode()), 30)
            assert checker.returncode == 0, output.decode()

    gateway.process.send_signal(signal.SIGTERM)
    assert await gateway.wait_exit(DRAIN_SECONDS + 5) == 0, gateway.logs()
    assert not metrics_dir.exists()  # the master removed its multiprocess directory


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_the_arbiter_replaces_a_dead_worker_and_workers_outlive_no_master(
        start_gateway: StartGateway, db: asyncpg.Pool, make: Factory, aiohttp_server: Any) -> None:
    _, plugin = await arrange(db, make, aiohttp_server)
    gateway = await start_gateway(2)
    master = gateway.process.pid
    before = await wait_children(master, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(now := children(master)) != 2 or victim in now:
        assert time.monotonic() < deadline, f"{before} -> {now}\n{gateway.logs()}"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        for _ in range(10):
            await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]
    assert f"Worker (pid:{victim}) was sent SIGKILL" in gateway.output()

    # Without its master (killed: no chance to stop them) the workers drain and exit by themselves.
    workers = children(master)
    try:
        gateway.process.kill()
        await gateway.wait_exit(5)
        deadline = time.monotonic() + DRAIN_SECONDS + 5
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their master"
            await asyncio.sleep(0.1)
    finally:
        for pid in workers:  # started by this test's gateway: ours to clean up if still there
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def copy_of_the_source(into: Path) -> Path:
    for name in ("gateway", "auth", "db", "routing", "migrations"):
        shutil.copytree(ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__"))
    return into


async def test_a_sighup_with_broken_code_or_settings_leaves_the_old_workers_serving(
        start_gateway: StartGateway, db: asyncpg.Pool, make: Factory, aiohttp_server: Any, tmp_path: Path) -> None:
    _, plugin = await arrange(db, make, aiohttp_server)
    source = copy_of_the_source(tmp_path / "src")
    gateway = await start_gateway(2, source=source)
    serving = await wait_children(gateway.process.pid, 2)
    app_module = source / "gateway" / "app.py"
    good_code = app_module.read_text()
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]

        async def refused_reload(problem: str) -> None:
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while problem not in gateway.output():
                assert time.monotonic() < deadline, gateway.logs()
                await asyncio.sleep(0.1)
            assert "SIGHUP ignored, the workers keep serving" in gateway.output()
            assert gateway.process.returncode is None
            assert children(gateway.process.pid) == serving  # the same workers, none killed
            async with session.get(plugin.path("/fast"), headers=plugin.member) as response:
                assert response.status == 200

        app_module.write_text(good_code + "\nraise ImportError('broken on purpose')\n")
        await refused_reload("ImportError: broken on purpose")
        app_module.write_text(good_code)
        (source / ".env").write_text("GATEWAY_UPSTREAM_SPACE_SHARE=7\n")  # read again on SIGHUP
        await refused_reload("GATEWAY_UPSTREAM_SPACE_SHARE")

        (source / ".env").unlink()  # fixed: the next SIGHUP replaces the workers
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while len(now := children(gateway.process.pid)) != 2 or now & serving:
            assert time.monotonic() < deadline, f"{serving} -> {now}\n{gateway.logs()}"
            await asyncio.sleep(0.1)
        await until_status(session, plugin.path("/fast"), plugin.member, 200, within=15)  # type: ignore[arg-type]
