"""Real PostgreSQL (and Redis where needed) for every test; nothing of our own is mocked.

The server is DATABASE_URL when it answers, else a throwaway cluster started here. A template
database is migrated once per run; each test module gets its own copy (CREATE DATABASE ...
TEMPLATE, a few milliseconds), so no test depends on another's rows.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from db.encryption import generate_key_ring_entry
from db.migrate import migrate
from gateway.dev import services as devservices
from gateway.app import SERVER_OPTIONS, create_app
from gateway.logs import JsonFormatter
from gateway.redis_link import RedisLink
from gateway.settings import Settings
from tests.factories import Factory
from tests.redis_topologies import ClusterTopology, SentinelTopology, start_cluster, start_sentinel

JWT_SECRET = "test-jwt-secret-" + uuid.uuid4().hex
ENCRYPTION_KEYS = f"{generate_key_ring_entry('t2')},{generate_key_ring_entry('t1')}"
ASSERTION_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


# Loggers the gateway's code and its server write to, at INFO for the whole run.
LOGGED_AT_INFO = ("gateway", "aiohttp")
# What must never reach a log line: the shapes of the credentials tests use, and this run's keys.
LEAK_PATTERNS: dict[str, re.Pattern[str]] = {
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
    "API key": re.compile(r"pgw_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}"),
    "plugin credential": re.compile(r"secret-(?:p-[0-9a-f]{10}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4})"),
    "bearer token": re.compile(r"(?i)bearer\s+(?!\[redacted\])[A-Za-z0-9\-._~+/]{8,}"),
    "PEM private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "API test password": re.compile(r"hunter2-[0-9a-f]{32}"),  # tests/api/helpers.py:SECRET_PASSWORD
    "JWT secret": re.compile(re.escape(JWT_SECRET)),
    **{f"encryption key {n}": re.compile(re.escape(entry.partition(":")[2]))
       for n, entry in enumerate(ENCRYPTION_KEYS.split(","), 1)},
}


def leaks_in(text: str) -> list[tuple[int, str]]:
    """(line number, what) for each line holding a secret; the secret itself is not repeated."""
    return [(number, name) for number, line in enumerate(text.splitlines(), 1)
            for name, pattern in LEAK_PATTERNS.items() if pattern.search(line)]


@pytest.fixture(scope="session", autouse=True)
def session_log_file() -> Iterator[Path]:
    """Every log record of the run, as the gateway writes it in production (JSON lines, redacted),
    in one file: $GATEWAY_TEST_LOG, else a temporary file removed when the run is clean.

    At the end the file is scanned for the test suite's secrets; a hit is an error of the run.
    """
    chosen = os.environ.get("GATEWAY_TEST_LOG", "")
    if chosen:
        path = Path(chosen)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        fd, name = tempfile.mkstemp(prefix="pgw-test-log-", suffix=".jsonl")
        os.close(fd)
        path = Path(name)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")  # truncated: this run only
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGED_AT_INFO}
    for name in LOGGED_AT_INFO:
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = True
    # Test servers keep aiohttp's own access log, which production turns off (access_log=None) and
    # which writes the raw request line, query string included; gateway.access is the real one.
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    access.setLevel(logging.WARNING)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        access.setLevel(access_level)
        for name, (level, propagate) in previous.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).propagate = propagate
    leaks = leaks_in(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else []
    if leaks:
        raise AssertionError(f"secrets reached the test log {path}: " + ", ".join(
            f"line {number}: {what}" for number, what in leaks[:20]))
    if not chosen:
        path.unlink(missing_ok=True)


def _with_database(dsn: str, name: str) -> str:
    return str(URL(dsn).with_path("/" + name))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    dsn = os.environ.get("DATABASE_URL", "")
    if dsn and devservices.postgres_answers(dsn):
        yield dsn
        return
    with tempfile.TemporaryDirectory(prefix="pgw-test-pg-") as tmp:
        server = devservices.start_postgres(Path(tmp) / "data")  # as root: maybe under /var/tmp
        try:
            yield server.dsn
        finally:
            server.stop(discard=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if url and devservices.redis_answers(url):
        yield url
        return
    server = devservices.start_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_database(postgres_server: str) -> AsyncIterator[str]:
    name = f"pgw_template_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await migrate(_with_database(postgres_server, name))
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def create_database(server: str, template: str) -> str:
    name = f"pgw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name


async def drop_database(server: str, name: str) -> None:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def database_url(postgres_server: str, template_database: str) -> AsyncIterator[str]:
    name = await create_database(postgres_server, template_database)
    yield _with_database(postgres_server, name)
    await drop_database(postgres_server, name)


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct access to the module's database, for arranging rows and checking what was stored."""
    from db.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=database_url, jwt_secret=JWT_SECRET, encryption_keys=ENCRYPTION_KEYS,
        assertion_key=ASSERTION_KEY, metrics_port=0,
        allow_private_upstreams=True,
    )
    values.update(overrides)
    return Settings(**values)


def gateway_client(settings: Settings) -> TestClient:
    """A client of a real gateway app with the production server options (`async with` it)."""
    return TestClient(TestServer(create_app(settings), **SERVER_OPTIONS))


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings), server_kwargs=SERVER_OPTIONS)


@pytest.fixture(scope="module")
def make(db: asyncpg.Pool) -> Factory:
    return Factory(db, JWT_SECRET)


# -- Redis Sentinel and Cluster: real redis-server processes of the module's own, stopped by PID
# (a module may define its own, secured ones: tests/proxy/test_redis_secured.py).

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


@pytest.fixture
async def links() -> AsyncIterator[Callable[..., RedisLink]]:
    """RedisLinks (one per gateway node) closed at the end of the test."""
    made: list[RedisLink] = []

    def make(url: str, timeout: float = 2.0) -> RedisLink:
        made.append(RedisLink(url, timeout))
        return made[-1]

    yield make
    for link in made:
        await link.close()
