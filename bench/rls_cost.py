#!/usr/bin/env python3
"""The cost of row-level security and the audit log: API writes on two databases side by side,
and the database transactions of the proxy's hot path (issue 10, item 8).

    .venv/bin/python bench/rls_cost.py [--seconds 20] [--rounds 3] [--writers 10] [--spaces 2]
                                       [--proxied 2000]

Starts, on free loopback ports, and stops again by PID (also on errors, Ctrl-C and SIGTERM):
  PostgreSQL  DATABASE_URL's server when it answers (default postgresql://postgres@127.0.0.1:5432/
              postgres), else a throwaway cluster; on it two databases of this run only, both
              migrated with db.migrate.migrate (what `gateway migrate` runs), dropped at the end:
                A  as shipped: row-level security enabled and forced on the gateway's tables,
                   audit triggers (migration 20250101001000_audit_log.sql, when it is there)
                B  the same, then RLS disabled (NO FORCE + DISABLE) on every table with
                   relrowsecurity and every trigger on a public table whose function's name starts
                   with `audit` dropped: what was changed is printed
              Both seeded identically as superuser: --spaces spaces, --writers users (each an
              `admin` of one space, writers dealt round-robin over the spaces), --writers approved
              services (one per writer: the seed's UNIQUE (service_id, space_id)), and a plugin on
              the upstream below installed in the first space with one `member` caller.
  upstream    a tiny aiohttp app in this process (GET anything → {"ok": true})
  gateways    one `gateway serve --workers 1` per database, both running for the whole run, each
              with its own pool (GATEWAY_DB_ROLE gateway_app: every query runs as that role, so
              RLS applies in A), GATEWAY_ALLOW_PRIVATE_UPSTREAMS=true, no Redis
Write workload: each writer loops install (POST /api/v1/spaces/{space}/installations with
service_id and credentials) → patch (PATCH .../installations/{id}, a new config) → uninstall
(DELETE .../installations/{id}) with its own JWT, for --seconds per run (a cycle started is
finished, so every run ends with nothing installed). Rounds alternate the order (A B, B A, ...)
so drift on the machine hits both. Printed: writes/s per round, per database the median of the
rounds and p50/p99 per operation kind (all rounds pooled), and the ratio A/B (the median of the
per-round ratios decides "goal met"); also CPU per operation (user + system CPU of the gateway's
processes and of the database's backends, /proc/PID/stat), which other load on the machine
disturbs much less than writes/s, and its ratio B/A.
Proxy (first, before the writes: see the comment in bench()): on A, --proxied GETs through the
plugin by a JWT caller from 10 clients (after a warm-up), and the database's transactions
(pg_stat_database.xact_commit + xact_rollback) over that interval next to an idle interval of the
same length, with the statements seen in pg_stat_activity meanwhile.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from yarl import URL  # noqa: E402

from auth.jwt import issue_token  # noqa: E402
from db.encryption import KeyRing, associated_data, generate_key_ring_entry  # noqa: E402
from db.migrate import migrate  # noqa: E402
from gateway.dev import services as devservices  # noqa: E402

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
AUDIT_MIGRATION = "20250101001000_audit_log.sql"
RLS_MIGRATION = "20250101000900_roles_and_row_security.sql"
APP_ROLE = "gateway_app"
PROXY_SLUG = "rls-bench-proxy"
PLUGIN_HEADER = "X-Plugin-Key"
PROXY_CLIENTS = 10
# A PostgreSQL (15+) backend flushes its statistics at most once a second; one that goes idle within
# a second of its last flush keeps them up to PGSTAT_IDLE_INTERVAL (10 s) longer. Waited before each read.
SETTLE_SECONDS = 11.0
OPS = ("install", "patch", "uninstall")
EXPECTED = {"install": 201, "patch": 200, "uninstall": 204}


def log(message: str) -> None:
    print(f"[rls_cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ============================================================================ databases

INSERT_USER = "INSERT INTO users (email) VALUES ($1) RETURNING id"
INSERT_SPACE = "INSERT INTO spaces (name) VALUES ($1) RETURNING id"
INSERT_MEMBER = "INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, $3)"
INSERT_SERVICE = """
INSERT INTO service_registry (name, slug, version, provider, status, api_base_url, api_auth_type, api_auth_config)
VALUES ($1, $1, '1', 'bench', 'approved', $2, 'api_key', $3) RETURNING id
"""
INSERT_ROUTE = """
INSERT INTO service_api_routes (service_id, route_path, method, target_url) VALUES ($1, '/{rest:path}', '*', '/{rest}')
"""
INSERT_INSTALLATION = """
INSERT INTO service_installations (id, service_id, space_id, credentials, permissions, status)
VALUES ($1, $2, $3, $4, '{"min_role": "viewer"}', 'active')
"""

RLS_TABLES = """
SELECT c.relname, c.relforcerowsecurity AS forced,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM pg_class c
WHERE c.relrowsecurity AND c.relnamespace = 'public'::regnamespace
ORDER BY c.relname
"""
AUDIT_TRIGGERS = """
SELECT t.tgname, c.relname, p.proname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace AND p.proname LIKE 'audit%'
ORDER BY c.relname, t.tgname
"""


def with_database(dsn: str, name: str) -> str:
    return str(URL(dsn).with_path("/" + name))


@dataclass
class Database:
    label: str          # "A" or "B"
    name: str
    url: str
    description: str = ""
    applied: list[str] = field(default_factory=list)
    rls_tables: list[str] = field(default_factory=list)
    audit_triggers: list[str] = field(default_factory=list)


@dataclass
class Seed:
    spaces: list[uuid.UUID]
    writers: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]  # (user, space, service) per writer
    proxy_space: uuid.UUID
    proxy_caller: uuid.UUID


async def describe(db: Database) -> None:
    conn = await asyncpg.connect(db.url)
    try:
        db.rls_tables = [f"{r['relname']}{' (forced)' if r['forced'] else ''}" for r in await conn.fetch(RLS_TABLES)]
        db.audit_triggers = [f"{r['tgname']} ON {r['relname']} ({r['proname']})"
                             for r in await conn.fetch(AUDIT_TRIGGERS)]
    finally:
        await conn.close()


async def strip_security(db: Database) -> list[str]:
    """B: RLS off on every table that has it, audit triggers dropped. The statements run."""
    done: list[str] = []
    conn = await asyncpg.connect(db.url)
    try:
        async with conn.transaction():
            for row in await conn.fetch("SELECT c.oid::regclass::text AS t FROM pg_class c WHERE c.relrowsecurity "
                                        "ORDER BY 1"):
                for statement in (f"ALTER TABLE {row['t']} NO FORCE ROW LEVEL SECURITY",
                                  f"ALTER TABLE {row['t']} DISABLE ROW LEVEL SECURITY"):
                    await conn.execute(statement)
                    done.append(statement)
            for row in await conn.fetch(AUDIT_TRIGGERS):
                statement = f'DROP TRIGGER "{row["tgname"]}" ON public."{row["relname"]}"'
                await conn.execute(statement)
                done.append(f"{statement}  -- {row['proname']}()")
    finally:
        await conn.close()
    return done


async def seed(url: str, keyring: KeyRing, upstream_url: str, plugin_key: str, writers: int,
               space_count: int) -> Seed:
    """The same rows in both databases (fresh ids each; the bench only uses them through Seed)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        async with conn.transaction():
            spaces = [await conn.fetchval(INSERT_SPACE, f"rls-bench-{n}") for n in range(space_count)]
            rows = []
            for n in range(writers):
                user = await conn.fetchval(INSERT_USER, f"rls-writer-{n}@example.test")
                space = spaces[n % space_count]
                await conn.execute(INSERT_MEMBER, space, user, "admin")
                service = await conn.fetchval(INSERT_SERVICE, f"rls-bench-w{n}", "https://vendor.example.test",
                                              {"header_name": PLUGIN_HEADER})
                rows.append((user, space, service))
            caller = await conn.fetchval(INSERT_USER, "rls-proxy-caller@example.test")
            await conn.execute(INSERT_MEMBER, spaces[0], caller, "member")
            service = await conn.fetchval(INSERT_SERVICE, PROXY_SLUG, upstream_url, {"header_name": PLUGIN_HEADER})
            await conn.execute(INSERT_ROUTE, service)
            installation = uuid.uuid4()
            sealed = keyring.seal({"api_key": plugin_key},
                                  associated_data("service_installations", installation, "credentials"))
            await conn.execute(INSERT_INSTALLATION, installation, service, spaces[0], sealed)
    finally:
        await conn.close()
    return Seed(spaces, rows, spaces[0], caller)


# ============================================================================ processes

def stop_process(process: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """SIGTERM to this PID (the arbiter drains and stops its worker), SIGKILL if it stays."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Gateway:
    db: Database
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def gateway_env(secrets_env: dict[str, str], tmp: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GATEWAY_", "REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"))}
    return {**clean, **secrets_env, "GATEWAY_DB_ROLE": APP_ROLE, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
            "TMPDIR": str(tmp)}


def spawn_gateway(db: Database, env: dict[str, str], tmp: Path) -> Gateway:
    port, metrics_port = devservices.free_port(), devservices.free_port()
    log_path = tmp / f"gateway-{db.label}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--workers", "1"],
            env={**env, "DATABASE_URL": db.url, "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port)},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Gateway(db, process, port, log_path)


async def wait_ready(session: aiohttp.ClientSession, gateway: Gateway, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: Any = None
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            break
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with session.get(f"{gateway.url}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    return dict(body)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway {gateway.db.label} not ready (exit {gateway.process.poll()}, readyz {body}):\n"
                       f"{gateway.output()[-3000:]}")


async def start_upstream() -> tuple[web.AppRunner, str]:
    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{rest:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = devservices.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


# ============================================================================ write workload

@dataclass
class Run:
    label: str
    seconds: float                                   # from the first request to the last answer
    latencies: dict[str, list[float]]                # per op kind, successful ones
    statuses: dict[str, Counter[int | str]]          # per op kind
    per_space: Counter[uuid.UUID]                    # successful operations per space
    gateway_cpu: float = 0.0                         # CPU seconds of the gateway's processes
    postgres_cpu: float = 0.0                        # CPU seconds of the database's backends

    @property
    def ok(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(n for kind, counter in self.statuses.items() for status, n in counter.items()
                   if status != EXPECTED[kind])

    def cpu_ms(self, which: str = "total") -> float:
        """CPU milliseconds per successful operation: gateway, postgres or both."""
        cpu = {"gateway": self.gateway_cpu, "postgres": self.postgres_cpu}.get(which, self.gateway_cpu + self.postgres_cpu)
        return cpu * 1000 / self.ok if self.ok else float("nan")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process still there (/proc/PID/stat)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return found


def gateway_pids(gateway: Gateway) -> list[int]:
    """The arbiter and its workers."""
    pids = [gateway.process.pid]
    for task in Path(f"/proc/{gateway.process.pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


async def backend_pids(admin: asyncpg.Connection, name: str) -> list[int]:
    return [r["pid"] for r in await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", name)]


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process that appeared meanwhile counts from 0."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


async def writer_loop(session: aiohttp.ClientSession, gateway: Gateway, token: str, space: uuid.UUID,
                      service: uuid.UUID, n: int, until: float, run: Run, record: bool) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{gateway.url}/api/v1/spaces/{space}/installations"
    cycle = 0
    while time.monotonic() < until:  # a cycle started is finished: nothing stays installed
        cycle += 1
        installation: str | None = None
        for kind in OPS:
            if kind != "install" and installation is None:
                break
            started = time.perf_counter()
            status: int | str
            try:
                if kind == "install":
                    body = {"service_id": str(service), "credentials": {"api_key": f"k-{n}-{cycle}"},
                            "config": {"cycle": cycle}}
                    async with session.post(base, json=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                        if status == 201:
                            installation = json.loads(payload)["id"]
                elif kind == "patch":
                    patch = {"config": {"cycle": cycle, "patched": True}}
                    async with session.patch(f"{base}/{installation}", json=patch, headers=headers) as response:
                        await response.read()
                        status = response.status
                else:
                    async with session.delete(f"{base}/{installation}", headers=headers) as response:
                        await response.read()
                        status = response.status
            except aiohttp.ClientError as exc:
                status = f"error:{type(exc).__name__}"
            elapsed = time.perf_counter() - started
            if record:
                run.statuses[kind][status] += 1
                if status == EXPECTED[kind]:
                    run.latencies[kind].append(elapsed)
                    run.per_space[space] += 1
            if status != EXPECTED[kind] and kind == "install":
                await asyncio.sleep(0.05)


async def write_run(session: aiohttp.ClientSession, admin: asyncpg.Connection, gateway: Gateway, seed: Seed,
                    tokens: list[str], seconds: float, record: bool = True) -> Run:
    run = Run(gateway.db.label, 0.0, defaultdict(list), defaultdict(Counter), Counter())
    gateway_before = cpu_of(gateway_pids(gateway))
    postgres_before = cpu_of(await backend_pids(admin, gateway.db.name))
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(writer_loop(session, gateway, tokens[n], space, service, n, until, run, record)
                           for n, (_, space, service) in enumerate(seed.writers)))
    run.seconds = time.monotonic() - started
    run.gateway_cpu = cpu_spent(gateway_before, cpu_of(gateway_pids(gateway)))
    run.postgres_cpu = cpu_spent(postgres_before, cpu_of(await backend_pids(admin, gateway.db.name)))
    return run


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(round(q * 100)) - 1]


# ============================================================================ proxy hot path

async def transactions(admin: asyncpg.Connection, name: str) -> tuple[Any, int]:
    """The server's clock and the committed + rolled-back transactions of database `name` so far
    (read from another database, so this read is not counted in it)."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await admin.fetchrow("SELECT clock_timestamp() AS now, sum(xact_commit + xact_rollback) AS n "
                               "FROM pg_stat_database WHERE datname = $1", name)
    return row["now"], int(row["n"])


ACTIVITY = """
SELECT pid, backend_type, query_start, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND query_start IS NOT NULL
"""


async def watch_activity(conn: asyncpg.Connection, name: str, seen: dict[tuple[int, Any], tuple[Any, str, str]],
                         stop: asyncio.Event) -> None:
    """Every 20 ms, the last statement of each backend of `name` (pg_stat_activity): names the
    statements run meanwhile, one per backend and poll at most (the count is pg_stat_database's)."""
    while not stop.is_set():
        for row in await conn.fetch(ACTIVITY, name):
            seen.setdefault((row["pid"], row["query_start"]), (row["query_start"], row["backend_type"], row["query"]))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def proxied(session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int) -> Counter[int | str]:
    statuses: Counter[int | str] = Counter()
    remaining = [count]

    async def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
            except aiohttp.ClientError as exc:
                statuses[f"error:{type(exc).__name__}"] += 1

    await asyncio.gather(*(client() for _ in range(PROXY_CLIENTS)))
    return statuses


@dataclass
class HotPath:
    requests: int
    statuses: Counter[int | str]
    request_seconds: float
    busy_seconds: float
    busy: int
    idle_seconds: float
    idle: int
    busy_statements: Counter[str]
    idle_statements: Counter[str]

    @property
    def per_request(self) -> float:
        return (self.busy - self.idle) / self.requests


async def hot_path(session: aiohttp.ClientSession, admin: asyncpg.Connection, watcher: asyncpg.Connection,
                   gateway: Gateway, seed: Seed, secret: str, count: int) -> HotPath:
    url = f"{gateway.url}/spaces/{seed.proxy_space}/plugins/{PROXY_SLUG}/ping"
    headers = {"Authorization": f"Bearer {issue_token(secret, seed.proxy_caller, lifetime_seconds=3600)}"}
    deadline = time.monotonic() + 30
    while True:  # the route table has the plugin, the caller's user and membership are cached
        async with session.get(url, headers=headers) as response:
            await response.read()
            if response.status == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxied route answers {response.status}, not 200; gateway {gateway.db.label}'s "
                               f"log:\n{gateway.output()[-3000:]}")
        await asyncio.sleep(0.1)
    warm = await proxied(session, url, headers, 200)
    if warm[200] != 200:
        raise RuntimeError(f"warm-up answers: {dict(warm)}")
    await asyncio.sleep(SETTLE_SECONDS)
    name = gateway.db.name
    seen: dict[tuple[int, Any], tuple[Any, str, str]] = {}
    stop = asyncio.Event()
    watching = asyncio.create_task(watch_activity(watcher, name, seen, stop))
    try:
        t0, (s0, before) = time.monotonic(), await transactions(admin, name)
        started = time.monotonic()
        statuses = await proxied(session, url, headers, count)
        request_seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        t1, (s1, after) = time.monotonic(), await transactions(admin, name)
        busy_seconds = t1 - t0
        await asyncio.sleep(busy_seconds)  # idle: the same length, no requests
        t2, (s2, idle_after) = time.monotonic(), await transactions(admin, name)
    finally:
        stop.set()
        await watching

    def statements(since: Any, until: Any) -> Counter[str]:
        return Counter(f"{kind}: {query}" for at, kind, query in seen.values() if since <= at < until)

    return HotPath(count, statuses, request_seconds, busy_seconds, after - before, t2 - t1, idle_after - after,
                   statements(s0, s1), statements(s1, s2))


# ============================================================================ the run

def committed(path: str) -> bool | None:
    """Whether git tracks `path` here; None outside a git work tree (an exported copy)."""
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, check=False)
    if inside.returncode != 0:
        return None
    done = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True, check=False)
    return done.returncode == 0


async def bench(args: argparse.Namespace, server: str) -> int:
    tag = uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(server)
    databases = [Database("A", f"gateway_rls_a_{tag}", ""), Database("B", f"gateway_rls_b_{tag}", "")]
    gateways: list[Gateway] = []
    upstream: web.AppRunner | None = None
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gateway-rls-cost-") as name:
        tmp = Path(name)
        try:
            for db in databases:
                await admin.execute(f'CREATE DATABASE "{db.name}"')
                created.append(db.name)
                db.url = with_database(server, db.name)
                db.applied = await migrate(db.url, app_role=APP_ROLE)
            audit_present = any(f.endswith("_audit_log.sql") for f in databases[0].applied)
            log(f"migrated both: {len(databases[0].applied)} migrations, the last {databases[0].applied[-1]}")
            if not audit_present:
                log(f"NOTE: {AUDIT_MIGRATION} is not in migrations/ yet: no audit triggers exist, "
                    "so B differs from A only by row-level security")
            elif (tracked := committed(f"migrations/{AUDIT_MIGRATION}")) is not True:
                log(f"NOTE: {AUDIT_MIGRATION} applied from "
                    + ("the working tree, not committed yet" if tracked is False else f"{ROOT}, not a git work tree"))
            stripped = await strip_security(databases[1])
            for db in databases:
                await describe(db)
            a, b = databases
            a.description = "as shipped: RLS forced" + (", audit triggers" if audit_present else ", no audit log yet")
            b.description = "RLS disabled" + (", audit triggers dropped" if audit_present else "")
            print(f"\nA {a.name}: row-level security on {len(a.rls_tables)} tables: {', '.join(a.rls_tables)}")
            print(f"  audit triggers: {', '.join(a.audit_triggers) or 'none'}")
            print(f"B {b.name}: the same migrations, then ({len(stripped)} statements):")
            for statement in stripped:
                print(f"  {statement}")
            if not any(s.startswith("DROP TRIGGER") for s in stripped):
                print("  (no trigger whose function's name starts with `audit`: none dropped)")
            print(f"  afterwards: RLS on {len(b.rls_tables)} tables, {len(b.audit_triggers)} audit triggers\n",
                  flush=True)

            upstream, upstream_url = await start_upstream()
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
            keys = generate_key_ring_entry("rls1")
            secret = secrets.token_urlsafe(32)
            plugin_key = secrets.token_urlsafe(16)
            keyring = KeyRing.parse(keys)
            seeds = {db.label: await seed(db.url, keyring, upstream_url, plugin_key, args.writers, args.spaces)
                     for db in databases}
            env = gateway_env({"GATEWAY_JWT_SECRET": secret, "GATEWAY_ENCRYPTION_KEYS": keys,
                               "GATEWAY_ASSERTION_KEY": pem}, tmp)
            for db in databases:
                gateways.append(spawn_gateway(db, env, tmp))
            lifetime = int(args.rounds * 2 * (args.seconds + 30) + 600)
            tokens = {db.label: [issue_token(secret, user, lifetime_seconds=lifetime)
                                 for user, _, _ in seeds[db.label].writers] for db in databases}
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for gateway in gateways:
                    ready = await wait_ready(session, gateway)
                    log(f"gateway {gateway.db.label} (pid {gateway.process.pid}, port {gateway.port}) ready; "
                        f"database_role {ready.get('database_role')}")
                by_label = {g.db.label: g for g in gateways}
                # Before the write workload: a LISTENing backend reads the notifications in
                # transactions of its own while idle and reports them to pg_stat_database only when
                # it next runs a statement or exits. The change listener's next statement is its
                # 30 s fingerprint check, so after the writes ~1 transaction per write landed in
                # the interval that held that check (seen: 1,913 for 1,986 writes, 15-30 s after).
                log(f"proxy hot path on A: {args.proxied} proxied requests ...")
                watcher = await asyncpg.connect(server)
                try:
                    hot = await hot_path(session, admin, watcher, by_label["A"], seeds["A"], secret, args.proxied)
                finally:
                    await watcher.close()
                for gateway in gateways:  # warm-up: first inserts, prepared statements, caches
                    warm = await write_run(session, admin, gateway, seeds[gateway.db.label], tokens[gateway.db.label], 2.0)
                    log(f"warm-up {gateway.db.label}: {warm.ok} operations, {warm.failed} failed")
                runs: dict[str, list[Run]] = {"A": [], "B": []}
                order_of: list[str] = []
                for r in range(args.rounds):
                    order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
                    order_of.append(" ".join(order))
                    for label in order:
                        run = await write_run(session, admin, by_label[label], seeds[label], tokens[label], args.seconds)
                        runs[label].append(run)
                        log(f"round {r + 1} {label}: {run.ok} operations in {run.seconds:.1f} s = "
                            f"{run.rate:.1f}/s, {run.failed} failed; CPU per operation {run.cpu_ms('gateway'):.2f} ms "
                            f"gateway + {run.cpu_ms('postgres'):.2f} ms PostgreSQL; "
                            f"load average {os.getloadavg()[0]:.2f}")
            report(args, databases, runs, order_of, hot, audit_present)
            return 0
        finally:
            for gateway in gateways:
                stop_process(gateway.process)
            if upstream is not None:
                await upstream.cleanup()
            for db_name in created:
                with contextlib.suppress(Exception):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            if created:
                log(f"dropped {', '.join(created)}")
            await admin.close()


def report(args: argparse.Namespace, databases: list[Database], runs: dict[str, list[Run]], order_of: list[str],
           hot: HotPath, audit_present: bool) -> None:
    a, b = databases
    print(f"\n{args.writers} writers over {args.spaces} spaces, install → patch → uninstall through the API, "
          f"{args.seconds:g} s per run, {args.rounds} rounds; one `gateway serve --workers 1` per database; "
          f"{os.cpu_count()} CPUs, load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| round | order | A writes/s | B writes/s | A/B | A CPU ms/op | B CPU ms/op | B/A CPU |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r, order in enumerate(order_of):
        ra, rb = runs["A"][r], runs["B"][r]
        print(f"| {r + 1} | {order} | {ra.rate:.1f} | {rb.rate:.1f} | {ra.rate / rb.rate:.3f} | {ra.cpu_ms():.2f} | "
              f"{rb.cpu_ms():.2f} | {rb.cpu_ms() / ra.cpu_ms():.3f} |")
    medians = {label: statistics.median(run.rate for run in runs[label]) for label in runs}
    cpu = {label: {which: statistics.median(run.cpu_ms(which) for run in runs[label])
                   for which in ("gateway", "postgres", "total")} for label in runs}
    print()
    header = "| database | writes/s (median) | " + " | ".join(f"{kind} p50 / p99 ms" for kind in OPS) + \
             " | CPU ms/op gateway + PostgreSQL (median) | failed | per space (all rounds) |"
    print(header)
    print("| --- | ---: | " + " | ".join("---:" for _ in OPS) + " | ---: | ---: | --- |")
    for db in databases:
        label = db.label
        pooled = {kind: [x for run in runs[label] for x in run.latencies[kind]] for kind in OPS}
        cells = " | ".join(f"{quantile(pooled[kind], 0.5) * 1000:.1f} / {quantile(pooled[kind], 0.99) * 1000:.1f}"
                           for kind in OPS)
        failed = sum(run.failed for run in runs[label])
        space_totals: Counter[uuid.UUID] = Counter()
        for run in runs[label]:
            space_totals.update(run.per_space)
        per_space = " / ".join(str(n) for _, n in sorted(space_totals.items(), key=lambda kv: -kv[1]))
        c = cpu[label]
        print(f"| {label}: {db.description} | {medians[label]:.1f} | {cells} | {c['gateway']:.2f} + "
              f"{c['postgres']:.2f} = {c['total']:.2f} | {failed} | {per_space} |")
    failures: dict[str, Counter[str]] = {label: Counter() for label in runs}
    for label in runs:
        for run in runs[label]:
            for kind, counter in run.statuses.items():
                for status, n in counter.items():
                    if status != EXPECTED[kind]:
                        failures[label][f"{kind} {status}"] += n
    for label, unexpected in failures.items():
        if unexpected:
            print(f"\n{label}: unexpected answers: {', '.join(f'{k}: {n}' for k, n in unexpected.most_common())}")
    ratio = medians["A"] / medians["B"]
    paired = statistics.median(ra.rate / rb.rate for ra, rb in zip(runs["A"], runs["B"]))
    cost = "row-level security and the audit triggers" if audit_present else "row-level security (no audit log yet)"
    verdict = "goal met" if paired >= 0.75 else "goal missed"
    print(f"\nratio A/B: {paired:.3f} (median of the per-round ratios; of the two medians: {ratio:.3f}): "
          f"{cost} cost {(1 - paired) * 100:.1f} % of the write throughput; goal: at most 25 % "
          f"(ratio ≥ 0.75): {verdict}")
    cpu_ratio = statistics.median(rb.cpu_ms() / ra.cpu_ms() for ra, rb in zip(runs["A"], runs["B"]))
    print(f"CPU per operation, B/A: {cpu_ratio:.3f} (median of the per-round ratios; gateway "
          f"{cpu['B']['gateway'] / cpu['A']['gateway']:.3f}, PostgreSQL {cpu['B']['postgres'] / cpu['A']['postgres']:.3f}"
          f" of the medians): the throughput ratio a CPU-bound machine with nothing else running would show, "
          f"less sensitive to other load than writes/s; by this measure: "
          f"{'goal met' if cpu_ratio >= 0.75 else 'goal missed'}"
          + (", as by writes/s" if (cpu_ratio >= 0.75) == (paired >= 0.75) else
             ", unlike writes/s: the two disagree, the cost is close to the limit"))
    if (ratio >= 0.75) != (paired >= 0.75):
        print("NOTE: the ratio of the two medians says otherwise: the machine's noise was larger than the "
              "difference between A and B in this run (see the rounds); the verdict follows the per-round "
              "ratios, whose A and B ran back to back")
    if not audit_present:
        print(f"NOTE: {AUDIT_MIGRATION} was not in migrations/ for this run: B differs from A only by "
              "row-level security; the audit log's cost is not in these figures")
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(hot.statuses.items(), key=str))
    print(f"\nproxy hot path, database A, JWT caller (a space member), {hot.requests} GETs from {PROXY_CLIENTS} "
          f"clients in {hot.request_seconds:.1f} s ({statuses})\n")
    print("| interval | seconds | database transactions |")
    print("| --- | ---: | ---: |")
    print(f"| {hot.requests} proxied requests (+{SETTLE_SECONDS:g} s for the statistics to settle) | "
          f"{hot.busy_seconds:.1f} | {hot.busy} |")
    print(f"| idle, same length | {hot.idle_seconds:.1f} | {hot.idle} |")
    for title, seen in (("requests", hot.busy_statements), ("idle", hot.idle_statements)):
        listed = "; ".join(f"{query} × {n}" for query, n in seen.most_common()) or "none"
        print(f"statements seen in A's pg_stat_activity, {title} interval: {listed}")
    print(f"\ndatabase transactions per proxied request: ({hot.busy} - {hot.idle}) / {hot.requests} = "
          f"{hot.per_request:.4f}"
          + (" (none beyond the idle interval's)" if hot.busy <= hot.idle else ""))
    print("(pg_stat_database.xact_commit + xact_rollback of A, read from another database, measured before the "
          "write workload; pg_stat_statements is not preloaded on this server. The gateway's own background "
          "queries, on its timers whether or not requests come: the route table's fingerprint on the change "
          "listener's connection and the API-key hashes' fingerprint, each every 30 s; the caller cache's batch "
          "refresh of users and memberships at 80 % of GATEWAY_CALLER_CACHE_TTL (48 s of 60 s); the API keys' "
          "last-used flush every 10 s, only when an API key was used (none here: the caller has a JWT). Each "
          "pooled query is followed by asyncpg's reset statement on release, a transaction of its own.)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per write run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs A and B once)")
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--spaces", type=int, default=2)
    parser.add_argument("--proxied", type=int, default=2000, help="proxied requests counted on A")
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_DSN
    with tempfile.TemporaryDirectory(prefix="gateway-rls-pg-") as tmp:
        server = None
        if not devservices.postgres_answers(dsn):
            log(f"{dsn} does not answer: a throwaway cluster")
            server = devservices.start_postgres(Path(tmp) / "data")
            dsn = server.dsn
        try:
            return asyncio.run(run_cancellable(args, dsn))
        except KeyboardInterrupt:
            return 130
        finally:
            if server is not None:
                server.stop(discard=True)


async def run_cancellable(args: argparse.Namespace, dsn: str) -> int:
    """SIGTERM cancels the run like Ctrl-C does, so the finally blocks stop and drop what was started."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await bench(args, dsn)
    except asyncio.CancelledError:
        log("cancelled: stopped what was started, dropped the databases")
        return 130


if __name__ == "__main__":
    sys.exit(main())
