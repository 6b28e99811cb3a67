"""A real `gateway serve` process per test (gunicorn's arbiter and its workers), on free loopback
ports, stopped by its own PID when the test ends (and, through it, only its workers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dev import services as devservices
from tests.conftest import ASSERTION_KEY, ENCRYPTION_KEYS, JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 10.0


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logs(self) -> str:
        """The end of the output, for failure messages."""
        return self.output()[-6000:]

    async def wait_exit(self, within: float) -> int | None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), within)
        return self.process.returncode


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(database_url: str, tmp_path: Path) -> AsyncIterator[StartGateway]:
    started: list[Gateway] = []

    async def start(workers: int, *, source: Path = ROOT, **settings: str) -> Gateway:
        """`source`: the tree the gateway imports its code from (a copy, to break it on purpose);
        `settings`: further environment variables (GATEWAY_...)."""
        port, metrics_port = devservices.free_port(), devservices.free_port()
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("GATEWAY_", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"))}
        env = {**clean, "DATABASE_URL": database_url, "GATEWAY_PORT": str(port),
               "GATEWAY_METRICS_PORT": str(metrics_port), "GATEWAY_DRAIN_SECONDS": str(DRAIN_SECONDS),
               "GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
               "GATEWAY_ASSERTION_KEY": ASSERTION_KEY, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
               "TMPDIR": str(tmp_path),  # where the arbiter makes its PROMETHEUS_MULTIPROC_DIR
               **settings}
        log = tmp_path / f"gateway-{port}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers),
                env=env, cwd=source, stdout=out, stderr=asyncio.subprocess.STDOUT)
        gateway = Gateway(process, port, metrics_port, log)
        started.append(gateway)
        deadline = time.monotonic() + 60
        # Printed by the arbiter once it listens (connections wait in the queue until a worker serves).
        while "gateway listening on" not in gateway.output():
            assert process.returncode is None, f"gateway exited with {process.returncode}:\n{gateway.logs()}"
            assert time.monotonic() < deadline, f"gateway did not start:\n{gateway.logs()}"
            await asyncio.sleep(0.1)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            if gateway.process.returncode is None:
                gateway.process.terminate()
        for gateway in started:
            if await gateway.wait_exit(DRAIN_SECONDS + 15) is None:
                gateway.process.kill()
                await gateway.process.wait()


