#!/usr/bin/env python3
"""One space against another on one plugin's upstream pool: the fair pool beside a FIFO connector.

    python bench/hostile.py [--duration 10] [--pool 4] [--slow 2] [--pool-timeout 1]

Space A calls a slow endpoint of a plugin (`--slow` seconds per call) from several clients in a
closed loop; space B calls a fast endpoint of the same plugin, one call at a time, every 20 ms.
Printed per target and scenario: B's p50/p99/max latency and A's answers by status.

  targets     gateway  the real gateway app in this process (its fair pools: per host `--pool`
                       slots, share 0.5, so A holds at most --pool/2; GATEWAY_UPSTREAM_POOL_TIMEOUT
                       = --pool-timeout, past which A's waits answer 503)
              fifo     bench/bare_proxy.py's app: one aiohttp ClientSession whose TCPConnector has
                       limit_per_host = --pool, the gateway's connector before the fair pools
                       (waiters served first come, first served, with no deadline)
  scenarios   idle     B alone
              share    A keeps --pool/2 calls in flight (its share)
              whole    A keeps --pool + 2 calls in flight (tries to take the whole pool)

The upstream (an aiohttp app), both proxies and all clients share this process's event loop on
loopback: the figures compare the two queues, not absolute proxy speed (bench/run.py does that).
PostgreSQL: DATABASE_URL when it answers (a database of its own, dropped at the end), else a
throwaway cluster, stopped at the end. Redis is not needed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from bench.bare_proxy import build_app as fifo_proxy
from db.migrate import migrate
from db.pool import create_pool
from gateway.app import SERVER_OPTIONS, create_app
from gateway.dev import services as devservices
from tests.conftest import JWT_SECRET, make_settings
from tests.factories import Factory
from tests.plugins import install_in, make_plugin

B_PAUSE = 0.02  # between two of B's calls


def upstream_app() -> web.Application:
    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"fast": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/slow", slow)
    return app


@dataclass
class Target:
    """Where A's and B's calls go, and with which headers."""

    name: str
    base: str
    a_slow: str
    b_fast: str
    a_headers: dict[str, str] = field(default_factory=dict)
    b_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    b_latencies: list[float]
    a_statuses: Counter[int]


async def run_scenario(target: Target, a_clients: int, duration: float) -> Result:
    stop = time.monotonic() + duration
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)  # the clients are never the bottleneck
    async with aiohttp.ClientSession(connector=connector) as session:

        async def space_a() -> None:
            while time.monotonic() < stop:
                status = 0
                try:
                    async with session.get(URL(target.base + target.a_slow, encoded=True),
                                           headers=target.a_headers) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError:
                    pass
                statuses[status] += 1
                if status != 200:
                    await asyncio.sleep(0.05)  # a refused call comes back soon, as a client would

        async def space_b() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                async with session.get(URL(target.base + target.b_fast, encoded=True),
                                       headers=target.b_headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(B_PAUSE)

        hogs = [asyncio.create_task(space_a()) for _ in range(a_clients)]
        await asyncio.sleep(0.3 if a_clients else 0)  # A's calls are in flight before B starts
        await space_b()
        await asyncio.gather(*hogs)
    return Result(latencies, statuses)


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A migrated database: on DATABASE_URL's server when it answers, else a throwaway cluster."""
    dsn = os.environ.get("DATABASE_URL", "")
    with tempfile.TemporaryDirectory(prefix="pgw-hostile-") as tmp:
        server = None
        if not (dsn and devservices.postgres_answers(dsn)):
            server = devservices.start_postgres(Path(tmp) / "data")
            dsn = server.dsn
        name = f"gateway_hostile_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = str(URL(dsn).with_path("/" + name))
            await migrate(url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
            if server is not None:
                server.stop(discard=True)


async def until_ok(target: Target) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(URL(target.base + target.b_fast, encoded=True),
                                   headers=target.b_headers) as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{target.name} never answered 200")


async def main(args: argparse.Namespace) -> None:
    upstream = TestServer(upstream_app(), host="127.0.0.1")
    await upstream.start_server()
    upstream_url = str(upstream.make_url("")).rstrip("/")
    fifo = TestServer(fifo_proxy(upstream_url, args.pool), host="127.0.0.1")
    await fifo.start_server()
    async with database() as url:
        pool = await create_pool(url, min_size=1, max_size=2)
        settings = make_settings(url, upstream_pool_per_host=args.pool, upstream_pool_timeout=args.pool_timeout,
                                 upstream_space_share=0.5)
        gateway = TestServer(create_app(settings), host="127.0.0.1", **SERVER_OPTIONS)
        await gateway.start_server()
        try:
            make = Factory(pool, JWT_SECRET)
            plugin = await make_plugin(pool, make, upstream_url, auth_type="none")
            space_b = await make.space("B")
            await install_in(pool, plugin, space_b)
            b_headers = make.auth(await make.member(space_b))
            gateway_base = str(gateway.make_url("")).rstrip("/")
            targets = [
                Target("gateway", gateway_base, f"/spaces/{plugin.space_id}/plugins/{plugin.slug}/slow?s={args.slow}",
                       f"/spaces/{space_b}/plugins/{plugin.slug}/fast", plugin.member, b_headers),
                Target("fifo", str(fifo.make_url("")).rstrip("/"), f"/slow?s={args.slow}", "/fast"),
            ]
            for target in targets:
                await until_ok(target)
            share = max(1, args.pool // 2)
            scenarios = [("idle", 0), ("share", share), ("whole", args.pool + 2)]
            print(f"pool {args.pool} per host (A's share: {share}), A's calls {args.slow} s, "
                  f"gateway pool timeout {args.pool_timeout} s, {args.duration} s per run\n")
            print(f"{'scenario':<8} {'A calls':>7} {'target':<8} {'B calls':>7} {'B p50 ms':>9} "
                  f"{'B p99 ms':>9} {'B max ms':>9}  A answers")
            for scenario, a_clients in scenarios:
                for target in targets:  # side by side: the same scenario on both, one after the other
                    result = await run_scenario(target, a_clients, args.duration)
                    b = result.b_latencies
                    answers = ", ".join(f"{status or 'error'}: {count}"
                                        for status, count in sorted(result.a_statuses.items())) or "-"
                    print(f"{scenario:<8} {a_clients:>7} {target.name:<8} {len(b):>7} "
                          f"{quantile(b, 0.5) * 1000:>9.1f} {quantile(b, 0.99) * 1000:>9.1f} "
                          f"{max(b) * 1000:>9.1f}  {answers}")
        finally:
            await gateway.close()
            await pool.close()
    await fifo.close()
    await upstream.close()


if __name__ == "__main__":
    # The gateway logs a warning per 503 it answers; here they are the point, counted in the table.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("gateway").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--pool", type=int, default=4, help="connections per upstream host")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds each of A's calls takes upstream")
    parser.add_argument("--pool-timeout", type=float, default=1.0,
                        help="the gateway's GATEWAY_UPSTREAM_POOL_TIMEOUT")
    asyncio.run(main(parser.parse_args()))
