#!/usr/bin/env python3
"""Faults under load: the gateway's full pipeline, loaded by a fixed number of clients, while its
dependencies fail in turn.

    .venv/bin/python bench/faults.py [--duration 30] [--clients 16] [--scenarios redis,postgres,upstream]

Starts, privately and on free loopback ports (and stops again by PID, also on Ctrl-C or errors):
  PostgreSQL  a throwaway cluster (gateway.dev.services.start_postgres) in a temp dir, migrated
              with `gateway migrate`, seeded with one approved plugin (api_key credential) with two
              routes, `/limited/{id}` (a rate limit counted in Redis, never reached) and
              `/cached/{id}` (response cache, TTL 1 s), installed in a space with four members
  Redis       a redis-server of its own (rate-limit counters and the response cache's L2)
  upstream    this file run with --upstream: a raw asyncio HTTP server that checks the injected
              credential and can be told to answer, hang, close or reset
  gateway     `python -m gateway.cli serve --workers 1`, a fresh one per scenario
Each scenario loads the gateway for --duration seconds (clients alternate between the two routes,
four JWT callers) while, in turn:
  redis       redis-server is killed with SIGKILL, then restarted on the same port 5 s later
  postgres    the cluster is stopped (pg_ctl -m fast), then started again
  upstream    the upstream hangs (longer than GATEWAY_UPSTREAM_TIMEOUT), then closes every
              connection at once (FIN), then resets them (RST), then answers again
Then prints, per scenario, the answers by status, the hung requests (no answer within the gateway's
upstream timeout + 1 s) and the 5xx answers the contract does not document for that fault, with
the gateway's log lines about them. See bench/README.md, section "Faults under load".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import contextlib
import json
import math
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

UPSTREAM_TIMEOUT = 2.0          # GATEWAY_UPSTREAM_TIMEOUT: first byte and between chunks
CONNECT_TIMEOUT = 1.0           # GATEWAY_UPSTREAM_CONNECT_TIMEOUT
CLIENT_TIMEOUT = UPSTREAM_TIMEOUT + 1.0  # past this, a request counts as hung
REDIS_DOWN_SECONDS = 5.0
SLUG = "faults-bench"
PLUGIN_HEADER = "X-Plugin-Key"
CALLERS = 4
IDS = 4                         # distinct ids per route: cached keys are shared by concurrent clients
RATE_LIMIT = 1_000_000          # per RATE_WINDOW: never reached, every request counted in Redis
RATE_WINDOW = 60
CACHE_TTL = 1
SCENARIOS = ("redis", "postgres", "upstream")


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ============================================================================ the upstream
# Run as `faults.py --upstream PORT KEY`: reads one mode per line on stdin (ok, hang, close,
# reset) and acknowledges each with `mode <m>` on stdout; exits when stdin closes.

UPSTREAM_MODES = ("ok", "hang", "close", "reset")


def _abort(writer: asyncio.StreamWriter, mode: str) -> None:
    if mode == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort() if mode == "reset" else writer.close()


def _content_length(head: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return int(match.group(1)) if match else 0


async def _upstream_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               state: dict[str, str], key: str) -> None:
    try:
        if state["mode"] in ("close", "reset"):
            _abort(writer, state["mode"])
            return
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if length := _content_length(head):
                await reader.readexactly(length)
            mode = state["mode"]
            if mode == "hang":  # never answer; wait for the gateway to give up and hang up
                while await reader.read(65536):
                    pass
                return
            if mode in ("close", "reset"):
                _abort(writer, mode)
                return
            good = re.search(rb"(?im)^" + PLUGIN_HEADER.encode() + rb":\s*" + re.escape(key.encode()) + rb"\s*$", head)
            status, body = (b"200 OK", b'{"ok":true}') if good else (b"401 Unauthorized", b'{"ok":false}')
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def upstream_main(port: int, key: str) -> None:
    loop = asyncio.get_running_loop()
    state = {"mode": "ok"}
    done = asyncio.Event()

    def set_mode(mode: str) -> None:
        if mode in UPSTREAM_MODES:
            state["mode"] = mode
            print(f"mode {mode}", flush=True)

    def read_commands() -> None:  # a thread: stdin is a pipe from the bench
        for line in sys.stdin:
            loop.call_soon_threadsafe(set_mode, line.strip())
        loop.call_soon_threadsafe(done.set)

    server = await asyncio.start_server(lambda r, w: _upstream_connection(r, w, state, key),
                                        "127.0.0.1", port, reuse_address=True, backlog=1024)
    threading.Thread(target=read_commands, daemon=True).start()
    print("ready", flush=True)
    async with server:
        await done.wait()


# ============================================================================ processes

import aiohttp
import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.jwt import issue_token
from db.encryption import KeyRing, associated_data, generate_key_ring_entry
from gateway.dev import services as devservices
from gateway.proxy.cache import LOCK_MS, LOCK_PREFIX
from gateway.proxy.ratelimit import KEY_PREFIX


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def stop_process(process: subprocess.Popen[Any], within: float = 20.0) -> None:
    """SIGTERM to this PID, SIGKILL (with its children) if it does not leave in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        for child in children_of(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        process.kill()
        process.wait()


class Upstream:
    """The upstream subprocess and its mode switch."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--upstream", str(port), key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._expect("ready")

    def _expect(self, line: str) -> None:
        assert self.process.stdout is not None
        got = self.process.stdout.readline().strip()
        if got != line:
            raise RuntimeError(f"upstream said {got!r}, expected {line!r}")

    def set_mode(self, mode: str) -> None:
        """Blocking: returns once the upstream has switched."""
        assert self.process.stdin is not None
        self.process.stdin.write(mode + "\n")
        self.process.stdin.flush()
        self._expect(f"mode {mode}")

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # it leaves when stdin closes
        stop_process(self.process, 5)


def generate_keys() -> dict[str, str]:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"GATEWAY_ENCRYPTION_KEYS": generate_key_ring_entry("faults1"),
            "GATEWAY_JWT_SECRET": secrets.token_urlsafe(32), "GATEWAY_ASSERTION_KEY": pem}


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, 20)


def gateway_env(base: dict[str, str], tmp: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GATEWAY_", "REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"))}
    return {**clean, **base, "TMPDIR": str(tmp)}


def run_migrate(env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"gateway migrate failed: {done.stdout}{done.stderr}")


def spawn_gateway(env: dict[str, str], cwd: Path, name: str) -> Gateway:
    port, metrics_port = devservices.free_port(), devservices.free_port()
    log_path = cwd / f"gateway-{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--workers", "1"],
            env={**env, "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port)},
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Gateway(process, port, metrics_port, log_path)


def wait_listening(gateway: Gateway) -> None:
    """The arbiter prints this once it listens (a worker then serves the queued connections)."""
    deadline = time.monotonic() + 60
    while "gateway listening on" not in gateway.output():
        if gateway.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start (exit {gateway.process.returncode}):\n"
                               f"{gateway.output()[-3000:]}")
        time.sleep(0.1)


# ============================================================================ seeding

INSERT_USER = "INSERT INTO users (email) VALUES ($1) RETURNING id"
INSERT_SPACE = "INSERT INTO spaces (name) VALUES ('faults') RETURNING id"
INSERT_MEMBER = "INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, 'member')"
INSERT_SERVICE = """
INSERT INTO service_registry (name, slug, version, provider, status, api_base_url, api_auth_type, api_auth_config)
VALUES ($1, $1, '1', 'bench', 'approved', $2, 'api_key', $3) RETURNING id
"""
INSERT_ROUTE = """
INSERT INTO service_api_routes (service_id, route_path, method, target_url, rate_limit, rate_limit_window,
                                cache_enabled, cache_ttl)
VALUES ($1, $2, 'GET', $3, $4, $5, $6, $7)
"""
INSERT_INSTALLATION = """
INSERT INTO service_installations (id, service_id, space_id, credentials, permissions, status)
VALUES ($1, $2, $3, $4, '{"min_role": "viewer"}', 'active')
"""


@dataclass
class Seeded:
    space_id: uuid.UUID
    users: list[uuid.UUID]


async def seed(dsn: str, keyring: KeyRing, upstream_url: str, plugin_key: str) -> Seeded:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        async with conn.transaction():
            space_id = await conn.fetchval(INSERT_SPACE)
            users = [await conn.fetchval(INSERT_USER, f"faults-{n}@example.test") for n in range(CALLERS)]
            for user in users:
                await conn.execute(INSERT_MEMBER, space_id, user)
            service_id = await conn.fetchval(INSERT_SERVICE, SLUG, upstream_url, {"header_name": PLUGIN_HEADER})
            await conn.execute(INSERT_ROUTE, service_id, "/limited/{id}", "/limited/{id}", RATE_LIMIT, RATE_WINDOW,
                               False, None)
            await conn.execute(INSERT_ROUTE, service_id, "/cached/{id}", "/cached/{id}", None, None, True, CACHE_TTL)
            installation_id = uuid.uuid4()
            sealed = keyring.seal({"api_key": plugin_key},
                                  associated_data("service_installations", installation_id, "credentials"))
            await conn.execute(INSERT_INSTALLATION, installation_id, service_id, space_id, sealed)
    finally:
        await conn.close()
    return Seeded(space_id, users)


# ============================================================================ load

@dataclass
class Phase:
    kind: str          # redis-down, postgres-down, hang, close, reset
    start: float       # seconds since the scenario's start
    end: float = math.inf

    def overlaps(self, start: float, end: float) -> bool:
        return start <= self.end and end >= self.start


@dataclass
class Record:
    sent: float        # seconds since the scenario's start
    done: float
    outcome: int | str  # an HTTP status, "hung", or "error:<exception>"
    request_id: str
    route: str


@dataclass
class Target:
    url: str
    headers: dict[str, str]
    route: str


def targets_for(gateway: Gateway, seeded: Seeded, tokens: list[str]) -> list[list[Target]]:
    """Per client, the requests it cycles through: both routes, IDS ids, its own caller."""
    base = f"{gateway.url}/spaces/{seeded.space_id}/plugins/{SLUG}"
    per_client = []
    for n in range(len(tokens)):
        auth = {"Authorization": f"Bearer {tokens[n]}"}
        per_client.append([Target(f"{base}/{route}/{i}", auth, route) for i in range(IDS)
                           for route in ("limited", "cached")])
    return per_client


async def client_loop(n: int, session: aiohttp.ClientSession, targets: list[Target], t0: float,
                      until: float, records: list[Record], tag: str) -> None:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    i = 0
    while (now := time.monotonic()) < until:
        target = targets[(i + n) % len(targets)]
        rid = f"faults-{tag}-{n}-{i}"
        outcome: int | str
        try:
            async with session.get(target.url, headers={**target.headers, "X-Request-ID": rid},
                                   timeout=timeout) as response:
                await response.read()
                outcome = response.status
        except TimeoutError:
            outcome = "hung"
        except aiohttp.ClientError as exc:
            outcome = f"error:{type(exc).__name__}"
        records.append(Record(now - t0, time.monotonic() - t0, outcome, rid, target.route))
        i += 1


async def warm_up(session: aiohttp.ClientSession, per_client: list[list[Target]]) -> None:
    """Every caller and path once with 200 (route table loaded, caller caches filled)."""
    deadline = time.monotonic() + 30
    for targets in per_client:
        for target in targets:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(target.url, headers=target.headers) as response:
                        await response.read()
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target.url} did not answer 200 within 30 s")
                await asyncio.sleep(0.1)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return 0, type(exc).__name__


async def metric_values(session: aiohttp.ClientSession, gateway: Gateway) -> dict[str, float]:
    """The gateway's counters of interest, summed over their labels except the ones kept."""
    wanted = ("gateway_rate_limit_fallback_total", "gateway_dependency_errors_total", "gateway_upstream_errors_total")
    try:
        async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return {}
    values: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if not match or match.group(1) not in wanted:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        keep = {k: v for k, v in labels.items() if k in ("mode", "dependency", "kind")}
        name = match.group(1) + ("{" + ",".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}" if keep else "")
        values[name] += float(match.group(3))
    return dict(values)


# ============================================================================ scenarios

@dataclass
class Context:
    """What a fault needs: the services, the gateway under load, a session for probes."""

    services: Services
    gateway: Gateway
    session: aiohttp.ClientSession
    t0: float
    duration: float
    wall_t0: float = field(default_factory=time.time)
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    def begin(self, kind: str) -> Phase:
        phase = Phase(kind, self.now())
        self.phases.append(phase)
        log(f"  {phase.start:5.1f} s  {kind} begins")
        return phase

    def end(self, phase: Phase) -> None:
        phase.end = self.now()
        log(f"  {phase.end:5.1f} s  {phase.kind} ends")


async def watch_flight_locks(client: Any, until: float, ctx: Context) -> tuple[int, float]:
    """Sample the response cache's cross-node locks (pgw:cl:*) until `until`: how many distinct
    ones were seen, and the longest any was seen held (a lock is released right after its
    fetch, so normally within milliseconds; one whose release failed lives its full LOCK_MS)."""
    seen: dict[bytes, float] = {}
    while ctx.now() < until:
        for name in [name async for name in client.scan_iter(match=LOCK_PREFIX + "*", count=1000)]:
            left = await client.pttl(name)
            if left > 0:
                seen[name] = max(seen.get(name, 0.0), (LOCK_MS - left) / 1000)
        await asyncio.sleep(0.1)
    return len(seen), max(seen.values(), default=0.0)


async def redis_fault(ctx: Context) -> None:
    import redis.asyncio as redis

    services = ctx.services
    await ctx.sleep_until(0.3 * ctx.duration)
    phase = ctx.begin("redis-down")
    os.kill(services.redis.process.pid, signal.SIGKILL)
    await asyncio.to_thread(services.redis.process.wait)
    await asyncio.sleep(min(REDIS_DOWN_SECONDS, 0.25 * ctx.duration))
    port = services.redis.port

    def restart() -> None:  # assigned in the thread: an interrupted run still stops this one
        services.redis = devservices.start_redis(port)

    await asyncio.to_thread(restart)
    ctx.end(phase)
    probe = redis.Redis.from_url(services.redis.url)
    try:
        locks, held = await watch_flight_locks(probe, ctx.duration - 1.0, ctx)
        ctx.notes.append(f"response-cache locks ({LOCK_PREFIX}*) seen in the new redis-server: {locks}, the longest "
                         f"seen held {held:.1f} s (LOCK_MS {LOCK_MS / 1000:g} s)")
        keys = await probe.keys(KEY_PREFIX + "*")
        ctx.notes.append(f"after the restart the limiter counts in Redis again: {'yes' if keys else 'NO'} "
                         f"({len(keys)} {KEY_PREFIX}* key(s) in the new redis-server)")
    finally:
        await probe.aclose()


async def postgres_fault(ctx: Context) -> None:
    services, url = ctx.services, f"{ctx.gateway.url}/readyz"
    await ctx.sleep_until(0.25 * ctx.duration)
    phase = ctx.begin("postgres-down")
    await asyncio.to_thread(services.postgres.stop)
    await asyncio.sleep(0.15 * ctx.duration)
    status, body = await get_json(ctx.session, url)
    ready = body if isinstance(body, dict) else {}
    ctx.notes.append(f"/readyz during the outage: {status}, database {ready.get('database')!r}, "
                     f"route table stale {ready.get('route_table', {}).get('stale')!r}")
    await ctx.sleep_until(0.55 * ctx.duration)
    await asyncio.to_thread(services.postgres.start)
    ctx.end(phase)
    while ctx.now() < ctx.duration - 1.0:
        status, body = await get_json(ctx.session, url)
        ready = body if isinstance(body, dict) else {}
        if status == 200 and ready.get("database") == "up" and ready.get("route_table", {}).get("listening_for_changes"):
            ctx.notes.append(f"/readyz: database up and listening for changes again {ctx.now() - phase.end:.1f} s "
                             "after PostgreSQL was back")
            return
        await asyncio.sleep(0.2)
    ctx.notes.append(f"/readyz did not report the database up and listening before the end: {status} {body}")


async def upstream_fault(ctx: Context) -> None:
    upstream, d = ctx.services.upstream, ctx.duration
    assert upstream is not None
    current: Phase | None = None
    for mode, at in (("hang", 0.2 * d), ("close", 0.5 * d), ("reset", 0.65 * d), ("ok", 0.8 * d)):
        await ctx.sleep_until(at)
        following = ctx.begin(mode) if mode != "ok" else None  # begins before the switch...
        await asyncio.to_thread(upstream.set_mode, mode)
        if current is not None:
            ctx.end(current)  # ...and ends after the next one took effect: never shorter than it was
        current = following


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: Callable[[Context], Awaitable[None]]
    # status → the phase kinds during which the contract documents it for this fault
    documented: dict[int, frozenset[str]]
    rule: str


SCENARIO_TABLE = {
    "redis": Scenario("redis", "redis-server SIGKILLed, restarted on the same port 5 s later", redis_fault, {},
                      "GATEWAY_RATE_LIMIT_FAILURE=local: no 5xx at all"),
    "postgres": Scenario("postgres", "PostgreSQL stopped (pg_ctl -m fast), started again", postgres_fault, {},
                         "proxied calls go on from memory: no 5xx"),
    "upstream": Scenario("upstream", "upstream hangs, then closes (FIN), then resets (RST), then answers again",
                         upstream_fault, {504: frozenset({"hang"}), 502: frozenset({"close", "reset"})},
                         "504 while it hangs, 502 while it closes/resets; nothing else"),
}


@dataclass
class ScenarioResult:
    name: str
    what: str
    rule: str
    duration: float
    clients: int
    records: list[Record]
    phases: list[Phase]
    notes: list[str]
    metrics: dict[str, float]
    log_path: Path
    wall_t0: float
    documented: dict[int, frozenset[str]]

    @property
    def statuses(self) -> Counter[int | str]:
        return Counter(r.outcome for r in self.records)

    @property
    def hung(self) -> list[Record]:
        return [r for r in self.records if r.outcome == "hung"]

    @property
    def no_answer(self) -> list[Record]:
        return [r for r in self.records if isinstance(r.outcome, str) and r.outcome.startswith("error:")]

    def is_documented(self, record: Record) -> bool:
        kinds = self.documented.get(record.outcome) if isinstance(record.outcome, int) else None
        return bool(kinds) and any(p.kind in kinds and p.overlaps(record.sent, record.done) for p in self.phases)

    @property
    def undocumented_5xx(self) -> list[Record]:
        return [r for r in self.records
                if isinstance(r.outcome, int) and r.outcome >= 500 and not self.is_documented(r)]

    @property
    def slowest_record(self) -> Record | None:
        answered = [r for r in self.records if isinstance(r.outcome, int)]
        return max(answered, key=lambda r: r.done - r.sent, default=None)

    @property
    def slowest(self) -> float:
        record = self.slowest_record
        return 0.0 if record is None else record.done - record.sent

    def recovery(self) -> str:
        """How long after the last fault ended answers were all 200 again."""
        if not self.phases:
            return "-"
        last_end = max(p.end for p in self.phases)
        late = [r for r in self.records if r.outcome != 200 and r.done > last_end]
        if not late:
            return "at once"
        last = max(r.done for r in late)
        if last > self.duration - 1.0:
            return "NOT within the run"
        return f"{last - last_end:.1f} s"


async def run_load(scenario: Scenario, services: Services, gateway: Gateway, per_client: list[list[Target]],
                   duration: float) -> tuple[list[Record], Context, dict[str, float]]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session, \
            aiohttp.ClientSession() as probes:
        await warm_up(session, per_client)
        before = await metric_values(probes, gateway)
        records: list[Record] = []
        t0 = time.monotonic()
        ctx = Context(services, gateway, probes, t0, duration)
        clients = [asyncio.create_task(client_loop(n, session, targets, t0, t0 + duration, records, scenario.name))
                   for n, targets in enumerate(per_client)]
        fault = asyncio.create_task(scenario.fault(ctx))
        try:
            await asyncio.gather(*clients)
            await fault
        finally:
            for task in (*clients, fault):
                task.cancel()
        after = await metric_values(probes, gateway)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    return records, ctx, delta


# ============================================================================ the gateway's log

@dataclass
class LogLine:
    stamp: float
    level: str
    logger: str
    message: str
    request_id: str
    raw: str


def read_log(path: Path) -> list[LogLine]:
    lines: list[LogLine] = []
    for raw in path.read_text(errors="replace").splitlines():
        record: Any = None
        if raw.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
        if isinstance(record, dict):
            stamp = 0.0
            with contextlib.suppress(ValueError):
                stamp = datetime.fromisoformat(str(record.get("ts", ""))).timestamp()
            lines.append(LogLine(stamp, str(record.get("level", "")), str(record.get("logger", "")),
                                 str(record.get("msg", "")), str(record.get("request_id", "")), raw))
        else:
            level = "ERROR" if ("Traceback" in raw or "Error" in raw) else "TEXT"
            lines.append(LogLine(0.0, level, "", raw.strip(), "", raw))
    return lines


def problems(lines: list[LogLine]) -> Counter[str]:
    return Counter(f"{line.level} {line.logger} {line.message}"[:160] for line in lines
                   if line.level in ("WARNING", "ERROR", "CRITICAL"))


def evidence(result: ScenarioResult, lines: list[LogLine], bad: list[Record], limit: int = 4) -> list[str]:
    """For the first few bad requests: the gateway's access line and its own lines about them, and
    the WARNING/ERROR lines logged within a second of the first one."""
    out: list[str] = []
    by_id: dict[str, list[LogLine]] = {}
    for line in lines:
        if line.request_id:
            by_id.setdefault(line.request_id, []).append(line)
    for record in bad[:limit]:
        phase = next((p.kind for p in result.phases if p.overlaps(record.sent, record.done)), "no fault")
        out.append(f"- `{record.request_id}` ({record.route}, sent at {record.sent:.2f} s, "
                   f"{record.outcome} after {record.done - record.sent:.2f} s, during: {phase})")
        for line in by_id.get(record.request_id, [])[:4]:
            out.append(f"    `{line.raw[:400]}`")
    if bad:
        first = result.wall_t0 + bad[0].done
        near = [line for line in lines if line.level in ("WARNING", "ERROR", "CRITICAL")
                and abs(line.stamp - first) <= 1.0]
        if near:
            out.append(f"- WARNING/ERROR lines within 1 s of the first one ({len(near)}):")
            out += [f"    `{line.raw[:400]}`" for line in near[:6]]
    return out


def after_the_fault(result: ScenarioResult, lines: list[LogLine], limit: int = 8) -> list[str]:
    """WARNING/ERROR lines not about one request, logged after the last fault had ended."""
    if not result.phases:
        return []
    end = max(p.end for p in result.phases)
    late = [line for line in lines if line.level in ("WARNING", "ERROR", "CRITICAL") and not line.request_id
            and line.stamp - result.wall_t0 > end]
    if not late:
        return []
    out = [f"- WARNING/ERROR lines after the fault ended at {end:.1f} s ({len(late)}):"]
    out += [f"    - {line.stamp - result.wall_t0:.2f} s `{line.logger} {line.message[:120]}`" for line in late[:limit]]
    return out


# ============================================================================ report

def status_cell(statuses: Counter[int | str], code: int) -> str:
    return f"{statuses.get(code, 0):,}"


def table(results: list[ScenarioResult]) -> list[str]:
    shown = (200, 429, 502, 503, 504)
    out = ["| scenario | sent | " + " | ".join(str(c) for c in shown)
           + " | other | hung | no answer | undocumented 5xx | slowest answer | all 200 again |",
           "|---|---:|" + "---:|" * len(shown) + "---|---:|---:|---:|---:|---|"]
    for r in results:
        statuses = r.statuses
        other = ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items(), key=str)
                          if isinstance(code, int) and code not in shown)
        out.append(f"| {r.name} | {len(r.records):,} | " + " | ".join(status_cell(statuses, c) for c in shown)
                   + f" | {other or '-'} | {len(r.hung):,} | {len(r.no_answer):,} | {len(r.undocumented_5xx):,} "
                   f"| {r.slowest:.2f} s | {r.recovery()} |")
    return out


def details(result: ScenarioResult) -> list[str]:
    phases = ", ".join(f"{p.kind} {p.start:.1f}–{p.end:.1f} s" for p in result.phases)
    out = [f"**{result.name}**: {result.what}. Faults: {phases}. Documented: {result.rule}."]
    out += [f"- {note}" for note in result.notes]
    if result.metrics:
        out.append("- gateway counters during the run: " + ", ".join(
            f"`{k}` +{v:,.0f}" for k, v in sorted(result.metrics.items())))
    if (slow := result.slowest_record) is not None:
        phase = next((p.kind for p in result.phases if p.overlaps(slow.sent, slow.done)), "no fault")
        out.append(f"- slowest answer: {slow.outcome} after {slow.done - slow.sent:.2f} s (`{slow.request_id}`, "
                   f"/{slow.route}, sent at {slow.sent:.2f} s, during: {phase})")
    lines = read_log(result.log_path)
    counted = problems(lines)
    if counted:
        out.append(f"- gateway WARNING/ERROR lines ({sum(counted.values()):,}):")
        out += [f"    - {n:,} × `{message}`" for message, n in counted.most_common(6)]
    else:
        out.append("- no WARNING/ERROR lines in the gateway's log")
    out += after_the_fault(result, lines)
    errors = Counter(r.outcome for r in result.no_answer)
    if errors:
        out.append("- no answer (connection closed by the gateway): "
                   + ", ".join(f"{k.removeprefix('error:')} × {n}" for k, n in errors.items()))
    for title, bad in (("undocumented 5xx", result.undocumented_5xx), ("hung", result.hung),
                       ("no answer", result.no_answer)):
        if bad:
            kinds = Counter((r.outcome, r.route) for r in bad)
            out.append(f"- **{title}**: " + ", ".join(f"{o} on /{route} × {n}" for (o, route), n in kinds.items()))
            out += evidence(result, lines, bad)
    return out


def report(results: list[ScenarioResult], args: argparse.Namespace) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"{date}, `.venv/bin/python bench/faults.py --duration {args.duration:g} --clients {args.clients}`: "
             f"{args.clients} clients, {args.duration:g} s per scenario, client timeout {CLIENT_TIMEOUT:g} s "
             f"(GATEWAY_UPSTREAM_TIMEOUT {UPSTREAM_TIMEOUT:g} s + 1 s), one `gateway serve --workers 1` per scenario.")
    out = [intro, "", *table(results), ""]
    for result in results:
        out += details(result) + [""]
    return "\n".join(out)


# ============================================================================ main

@dataclass
class Services:
    tmp: Path
    postgres: Any = None
    redis: Any = None
    upstream: Upstream | None = None
    gateway: Gateway | None = None

    def stop(self) -> None:
        for name, stop in (("gateway", lambda: self.gateway and self.gateway.stop()),
                           ("upstream", lambda: self.upstream and self.upstream.stop()),
                           ("redis", lambda: self.redis and self.redis.stop()),
                           ("postgres", lambda: self.postgres and self.postgres.stop(discard=True))):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                log(f"could not stop {name}: {exc}")


def start_services(services: Services) -> tuple[dict[str, str], Seeded, list[str]]:
    tmp = services.tmp
    tmp.chmod(0o755)  # as root PostgreSQL runs as `postgres`, which must reach its data dir
    services.postgres = devservices.start_postgres(tmp / "pgdata")
    if not isinstance(services.postgres, devservices.LocalPostgres):
        raise TypeError("this bench needs PostgreSQL's binaries (pg_ctl) to stop and start the cluster")
    log(f"PostgreSQL on port {services.postgres.port} ({services.postgres.where()})")
    services.redis = devservices.start_redis()
    log(f"redis-server on port {services.redis.port} (pid {services.redis.process.pid})")
    plugin_key = secrets.token_urlsafe(24)
    services.upstream = Upstream(devservices.free_port(), plugin_key)
    log(f"upstream on port {services.upstream.port} (pid {services.upstream.process.pid})")
    keys = generate_keys()
    env = gateway_env({
        **keys, "DATABASE_URL": services.postgres.dsn, "REDIS_URL": services.redis.url,
        "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true", "GATEWAY_WORKERS": "1",
        "GATEWAY_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT), "GATEWAY_UPSTREAM_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        "GATEWAY_RATE_LIMIT_FAILURE": "local", "GATEWAY_DRAIN_SECONDS": "2",
    }, tmp)
    run_migrate(env, tmp)
    seeded = asyncio.run(seed(services.postgres.dsn, KeyRing.parse(keys["GATEWAY_ENCRYPTION_KEYS"]),
                              f"http://127.0.0.1:{services.upstream.port}/v1", plugin_key))
    tokens = [issue_token(keys["GATEWAY_JWT_SECRET"], user, lifetime_seconds=3600) for user in seeded.users]
    log(f"migrated and seeded: plugin {SLUG!r} in space {seeded.space_id}, {len(tokens)} callers")
    return env, seeded, tokens


def run_scenario(scenario: Scenario, services: Services, env: dict[str, str], seeded: Seeded,
                 tokens: list[str], args: argparse.Namespace) -> ScenarioResult:
    log(f"scenario {scenario.name}: {scenario.what}")
    services.gateway = gateway = spawn_gateway(env, services.tmp, scenario.name)  # stopped by main() if need be
    wait_listening(gateway)
    log(f"  gateway pid {gateway.process.pid} on port {gateway.port}; {args.clients} clients for {args.duration:g} s")
    per_caller = targets_for(gateway, seeded, tokens)
    per_client = [per_caller[n % len(per_caller)] for n in range(args.clients)]
    try:
        records, ctx, metrics = asyncio.run(run_load(scenario, services, gateway, per_client, args.duration))
    finally:
        gateway.stop()
        services.gateway = None
    result = ScenarioResult(scenario.name, scenario.what, scenario.rule, args.duration, args.clients, records,
                            ctx.phases, ctx.notes, metrics, gateway.log_path, ctx.wall_t0, scenario.documented)
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(result.statuses.items(), key=str))
    log(f"  {len(records):,} requests ({statuses}); hung {len(result.hung)}, "
        f"undocumented 5xx {len(result.undocumented_5xx)}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load the gateway while Redis, PostgreSQL and the upstream fail.")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per scenario (default 30)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, in order (default {','.join(SCENARIOS)})")
    parser.add_argument("--keep", metavar="DIR", help="copy the gateways' logs to DIR")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in args.scenarios if s not in SCENARIO_TABLE]:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.duration < 10 or args.clients < 1:
        parser.error("--duration must be at least 10 s and --clients at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    services = Services(Path(tempfile.mkdtemp(prefix="gateway-faults-")))
    results: list[ScenarioResult] = []
    text = ""
    try:
        env, seeded, tokens = start_services(services)
        for name in args.scenarios:
            results.append(run_scenario(SCENARIO_TABLE[name], services, env, seeded, tokens, args))
        text = report(results, args)
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for result in results:
                shutil.copy(result.log_path, Path(args.keep) / result.log_path.name)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            services.stop()
            shutil.rmtree(services.tmp, ignore_errors=True)
            log(f"stopped everything started, removed {services.tmp}")
        finally:
            signal.signal(signal.SIGINT, previous)
    print()
    print(text)
    bad = sum(len(r.hung) + len(r.undocumented_5xx) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(upstream_main(int(sys.argv[2]), sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
