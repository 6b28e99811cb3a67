"""Metric families whose label values form a known small set are exported from the start at 0
(contract, "Metrics"), and PostgreSQL failures are counted where the gateway meets them
(db/pool.py): connections that cannot be opened, and calls that fail because the server went away
or did not answer in time. One test starts a PostgreSQL cluster of its own and stops only that one."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db.migrate import migrate
from db.pool import Database, connect, create_pool
from gateway import metrics
from gateway.dev import services as devservices
from tests.conftest import gateway_client, make_settings
from tests.plugins import until_status

FIXED_SETS = {
    "gateway_dependency_errors": ("dependency", ("postgres", "redis")),
    "gateway_rate_limit_fallback": ("mode", ("local", "open", "closed")),
    "gateway_client_body_aborted": ("reason", ("timeout", "min_rate")),
}
SCRAPE = ("from prometheus_client import generate_latest; from gateway import metrics; "
          "print(generate_latest(metrics.REGISTRY).decode())")


def postgres_errors() -> float:
    return metrics.REGISTRY.get_sample_value("gateway_dependency_errors_total", {"dependency": "postgres"}) or 0.0


async def until_counted(before: float, within: float = 2.0) -> float:
    """The count once it passed `before` (asyncpg reports a failed query on the next loop turn)."""
    deadline = time.monotonic() + within
    while postgres_errors() <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return postgres_errors()


def test_a_fresh_scrape_has_every_fixed_set_at_zero() -> None:
    text = subprocess.run([sys.executable, "-c", SCRAPE], check=True, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent).stdout
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (label, values) in FIXED_SETS.items():
        samples = {s.labels[label]: s.value for s in families[name].samples if s.name == name + "_total"}
        assert samples == dict.fromkeys(values, 0.0), name


async def test_a_connection_that_cannot_be_opened_is_counted() -> None:
    before = postgres_errors()
    database = Database(f"postgresql://gateway@127.0.0.1:{devservices.free_port()}/gateway")
    connecting = asyncio.create_task(database.connect(retry_seconds=0.05))
    await asyncio.sleep(0.5)
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    assert postgres_errors() >= before + 2  # every attempt of the retry loop
    with pytest.raises(OSError):
        await connect(f"postgresql://gateway@127.0.0.1:{devservices.free_port()}/gateway", timeout=1)
    assert await until_counted(before + 2) >= before + 3


async def test_a_call_that_times_out_is_counted_a_bad_query_is_not(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        before = postgres_errors()
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await pool.fetchval("SELEKT 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute("DO $$ BEGIN RAISE unique_violation; END $$")
        await asyncio.sleep(0.05)
        assert postgres_errors() == before
        with pytest.raises(asyncio.TimeoutError):
            await pool.fetchval("SELECT pg_sleep(5)", timeout=0.1)
        assert await until_counted(before) == before + 1
    finally:
        pool.terminate()


@pytest.fixture
async def own_postgres() -> AsyncIterator[devservices.LocalPostgres]:
    with tempfile.TemporaryDirectory(prefix="pgw-metrics-") as tmp:
        Path(tmp).chmod(0o755)
        server = devservices.start_postgres(Path(tmp) / "data")
        try:
            await migrate(server.dsn)
            yield server
        finally:
            server.stop()


async def test_stopping_postgresql_is_counted(own_postgres: devservices.LocalPostgres) -> None:
    async with gateway_client(make_settings(own_postgres.dsn)) as client:
        await until_status(client, "/readyz", {}, 200, within=10)
        before = postgres_errors()
        own_postgres.stop()
        # The readiness probe's query meets the outage (and so does every call after it: the
        # pool tries to open a new connection each time).
        deadline = time.monotonic() + 5
        while postgres_errors() <= before and time.monotonic() < deadline:
            await (await client.get("/readyz")).read()
            await asyncio.sleep(0.05)
        counted = postgres_errors()
        assert counted > before
        ready = await until_status(client, "/readyz", {}, 200)
        assert (await ready.json())["database"] == "down"
        assert await until_counted(counted) > counted  # that probe failed again, and was counted
