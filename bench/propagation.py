#!/usr/bin/env python3
"""Propagation across nodes: how long a registry change made through the API takes until every
worker of every gateway node serves the new state (issue 14 item 3; goal: p99 < 1 s).

    .venv/bin/python bench/propagation.py [--changes 100] [--nodes 3] [--workers 2] [--probes 8]

Starts, on free loopback ports, and stops again by PID at the end (also on errors, Ctrl-C and
SIGTERM):
  PostgreSQL  a database of its own on DATABASE_URL's server (default postgresql://postgres@
              127.0.0.1:5432/postgres) when it answers, else a throwaway cluster; migrated with
              db.migrate.migrate, dropped (or stopped) at the end. Seeded in SQL: an approved
              plugin (no upstream auth) with the service-wide route GET /ping, maintained by
              `alice`; a space for the routes and keys plus one space per installation change,
              the plugin installed (active) in each, `alice` their owner and `bob` a member; one
              API key (role member) per key change.
  upstream    a one-process aiohttp app answering 200 to every path.
  nodes       --nodes x `gateway serve --workers W` over that database, sharing Redis
              (REDIS_URL = --redis with database --redis-db, which must be empty at the start; the
              gateway's `pgw:` keys there are deleted at the end).
Redis is not started or stopped.

The changes (--changes in all, the three kinds in equal shares, shuffled with --seed; the API
call goes to node n mod --nodes):
  route         POST /api/v1/services/{id}/routes as the maintainer (GET /added-n → /ping):
                bob's GET of that path answers 404 before, 200 after
  installation  PATCH /api/v1/spaces/{s}/installations/{id} {"status": "inactive"} as the space's
                owner: bob's GET /ping there answers 200 before, 404 after. Set active again
                afterwards and waited for like a change (shown on its own line, not counted)
  key           DELETE /api/v1/spaces/{s}/api-keys/{id} as the space's owner: GET /ping with that
                key in X-API-Key answers 200 before, 401 after

Which worker answered, and the criterion. The workers of a node are gunicorn's children sharing
one listening socket (gateway/serve.py binds it in the arbiter, without SO_REUSEPORT), so the
kernel hands each new connection to whichever worker accepts first, and one request cannot say
who answered. So each probe is a fresh TCP connection, kept open (HTTP/1.1 keep-alive) until it
is attributed: once its answer's head has arrived, the server's side of that connection is
looked up through sock_diag, as `ss` does (/proc/net/tcp if that is refused): local port = the
node's, remote port = the probe's own, giving its socket inode; the worker holding that inode
among its descriptors (/proc/<worker>/fd) answered it. No guessing from counts of successes:
every answer is attributed to the one process that gave it (the count per worker, and of answers
that could not be attributed, is printed; an answer from an unknown process stops the run).
Per change: first every worker of every node must have answered the old state at least once.
Then t0 is taken, the API call is sent, and rounds of probes run concurrently with it: each
round opens --probes new connections to every node at once, attributes every answer, then waits
--interval. For each worker, `seen` is when its first answer in the new state arrived; the
change has propagated at the latest `seen` of all workers, and the figure is that minus t0 (so it
includes the API call itself). This is an upper bound: a worker may have switched earlier and
not been reached. The true moment lies after the latest send of an old-state answer after t0
(a worker answering the old state had not switched when the request left): the lower bound,
printed beside it. The gap between the two spans the send of one round to the last answer of
the next (two rounds and the pause between them: the rounds' duration is printed too), more when
a worker happened to accept none of a round's connections.
A worker answering the old state after it had answered the new one (a request sent after the new
answer arrived) would be counted as a regression; any other answer (another status, or none
within --timeout) counts as neither state and is listed; a change not seen everywhere within
--timeout seconds counts as infinitely slow. The probes are real load (about a hundred requests
a second per node), served with the access log on, as in production.
`--logs DIR` keeps the nodes' logs.

Settings differing from the defaults: GATEWAY_ALLOW_PRIVATE_UPSTREAMS=true (the upstream is on
loopback), GATEWAY_AUTH_FAILURES_PER_MINUTE=1000000 (the revoked keys' probes all come from
127.0.0.1: past 60 failures a minute they would answer 429 instead of 401), GATEWAY_DRAIN_SECONDS=2
and GATEWAY_METRICS_PORT=0.
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

import argparse
import asyncio
import contextlib
import hashlib
import math
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from auth.api_keys import new_api_key
from auth.jwt import issue_token
from db.encryption import generate_key_ring_entry
from db.migrate import migrate
from gateway.dev import services as devservices

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SLUG = "propagation-bench"
KINDS = ("route", "installation", "key")
EXPECTED = {"route": (404, 200), "installation": (200, 404), "key": (200, 401), "reactivation": (404, 200)}
UPSTREAM_APP = """
import sys
from aiohttp import web
async def ok(request):
    return web.json_response({"ok": True})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def log(message: str) -> None:
    print(f"[propagation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ processes

def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def stop_process(process: subprocess.Popen[Any], within: float = 20.0) -> None:
    """SIGTERM to this PID; SIGKILL to it and its children if it does not leave in time."""
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


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_node(name: str, env: dict[str, str], tmp: Path) -> Node:
    port = devservices.free_port()
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--workers", env["GATEWAY_WORKERS"]],
            env={**env, "GATEWAY_PORT": str(port)}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # Ctrl-C reaches only this script, which stops the nodes itself
    return Node(name, process, port, log_path)


def wait_workers(node: Node, workers: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} exited with {node.process.returncode}:\n{node.output()[-3000:]}")
        pids = children_of(node.process.pid)
        if "gateway listening on" in node.output() and len(pids) == workers:
            node.workers = sorted(pids)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name} did not start {workers} workers:\n{node.output()[-3000:]}")
        time.sleep(0.1)


def node_env(args: argparse.Namespace, database_url: str, tmp: Path) -> tuple[dict[str, str], str]:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    jwt_secret = "propagation-" + os.urandom(24).hex()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GATEWAY_", "REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"))}
    env = {**clean, "DATABASE_URL": database_url, "REDIS_URL": redis_url(args),
           "GATEWAY_WORKERS": str(args.workers), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_METRICS_PORT": "0",
           "GATEWAY_JWT_SECRET": jwt_secret, "GATEWAY_ENCRYPTION_KEYS": generate_key_ring_entry("prop1"),
           "GATEWAY_ASSERTION_KEY": pem, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
           "GATEWAY_AUTH_FAILURES_PER_MINUTE": "1000000", "GATEWAY_DRAIN_SECONDS": "2",
           "TMPDIR": str(tmp)}  # where each arbiter makes its PROMETHEUS_MULTIPROC_DIR
    return env, jwt_secret


def redis_url(args: argparse.Namespace) -> str:
    return str(URL(args.redis).with_path(f"/{args.redis_db}"))


# ============================================================================ the database

@asynccontextmanager
async def database(dsn: str, tmp: Path) -> AsyncIterator[str]:
    """A migrated database of its own: on `dsn`'s server when it answers, else a throwaway cluster."""
    server = None
    if not await asyncio.to_thread(devservices.postgres_answers, dsn):
        log(f"{dsn} does not answer: starting a throwaway PostgreSQL")
        server = await asyncio.to_thread(devservices.start_postgres, tmp / "pgdata")
        dsn = server.dsn
    name = f"gateway_propagation_{uuid.uuid4().hex[:8]}"
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


INSERT_USER = "INSERT INTO users (email, display_name) VALUES ($1, $1) RETURNING id"
INSERT_SPACE = "INSERT INTO spaces (name) VALUES ($1) RETURNING id"
INSERT_MEMBER = "INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, $3)"
INSERT_SERVICE = """
INSERT INTO service_registry (name, slug, version, provider, status, api_base_url, api_auth_type)
VALUES ($1, $1, '1', 'bench', 'approved', $2, NULL) RETURNING id
"""
INSERT_MAINTAINER = "INSERT INTO service_maintainers (service_id, user_id) VALUES ($1, $2)"
INSERT_ROUTE = """
INSERT INTO service_api_routes (service_id, route_path, method, target_url) VALUES ($1, '/ping', 'GET', '/ping')
"""
INSERT_INSTALLATION = """
INSERT INTO service_installations (service_id, space_id, installed_by, credentials, permissions, status)
VALUES ($1, $2, $3, '{}', '{"min_role": "viewer"}', 'active') RETURNING id
"""
INSERT_KEY = """
INSERT INTO api_keys (space_id, name, role, prefix, key_hash, created_by)
VALUES ($1, $2, 'member', $3, $4, $5) RETURNING id
"""


@dataclass
class Seeded:
    service_id: uuid.UUID
    space_id: uuid.UUID          # the routes' and keys' space
    alice: uuid.UUID             # maintainer, owner of every space
    bob: uuid.UUID               # member of every space
    installations: list[tuple[uuid.UUID, uuid.UUID]]   # (space, installation), one per change
    keys: list[tuple[uuid.UUID, str]]                  # (key id, key), one per change


async def seed(url: str, upstream: str, installations: int, keys: int) -> Seeded:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            alice = await conn.fetchval(INSERT_USER, "alice@propagation.test")
            bob = await conn.fetchval(INSERT_USER, "bob@propagation.test")
            service_id = await conn.fetchval(INSERT_SERVICE, SLUG, upstream)
            await conn.execute(INSERT_MAINTAINER, service_id, alice)
            await conn.execute(INSERT_ROUTE, service_id)
            spaces = [await conn.fetchval(INSERT_SPACE, f"propagation-{n}") for n in range(installations + 1)]
            inst = []
            for space in spaces:
                await conn.execute(INSERT_MEMBER, space, alice, "owner")
                await conn.execute(INSERT_MEMBER, space, bob, "member")
                inst.append((space, await conn.fetchval(INSERT_INSTALLATION, service_id, space, alice)))
            made = []
            for n in range(keys):
                key, prefix = new_api_key()
                key_id = await conn.fetchval(INSERT_KEY, spaces[0], f"propagation-{n}", prefix,
                                             hashlib.sha256(key.encode()).digest(), alice)
                made.append((key_id, key))
    finally:
        await conn.close()
    return Seeded(service_id, spaces[0], alice, bob, inst[1:], made)


# ============================================================================ probing

@dataclass
class Answer:
    node: Node
    sent: float
    arrived: float
    status: int
    worker: int | None = None


async def _probe(node: Node, request: bytes, timeout: float) -> tuple[Answer, asyncio.StreamWriter | None]:
    sent = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", node.port), timeout)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ValueError, IndexError):
        status = 0  # no answer: never counts as either state
    return Answer(node, sent, time.monotonic(), status), writer


SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR = 20, 0x1, 0x300, 3, 2
TCP_ESTABLISHED = 1
NETLINK_SOCK_DIAG = 4


def _established_netlink() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every established IPv4 TCP socket, through sock_diag
    (what `ss` uses): unlike /proc/net/tcp it is asked for one state only, so the TIME_WAIT
    entries the probes leave behind cost nothing."""
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_ESTABLISHED) + bytes(48)
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    found: list[tuple[int, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.sendto(header + request, (0, 0))
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                body = offset + 16
                sport, dport = struct.unpack_from(">HH", data, body + 4)
                (inode,) = struct.unpack_from("=I", data, body + 68)
                found.append((sport, dport, inode))
                offset += (length + 3) & ~3


def _established_proc() -> list[tuple[int, int, int]]:
    found: list[tuple[int, int, int]] = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "01":
                found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                              int(fields[9])))
    return found


def _server_inodes(ports: set[int]) -> dict[tuple[int, int], str]:
    """(server port, client port) → socket inode of the server's side, for the nodes' ports."""
    try:
        sockets = _established_netlink()
    except OSError:
        sockets = _established_proc()
    return {(local, remote): str(inode) for local, remote, inode in sockets if local in ports}


def _owners(pids: list[int], inodes: set[str]) -> dict[str, int]:
    """socket inode → the worker holding it."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if inode is not None:
                        owners[inode] = pid
    return owners


async def probe_round(nodes: list[Node], requests: dict[int, bytes], probes: int, timeout: float) -> list[Answer]:
    """--probes fresh connections to every node at once; every answer attributed to its worker."""
    results = await asyncio.gather(*(_probe(node, requests[node.port], timeout)
                                     for node in nodes for _ in range(probes)))
    try:
        inodes = _server_inodes({node.port for node in nodes})
        by_answer: dict[int, str] = {}
        for index, (answer, writer) in enumerate(results):
            sock = writer.get_extra_info("sockname") if writer is not None else None
            if sock is not None and answer.status:
                inode = inodes.get((answer.node.port, sock[1]))
                if inode is not None:
                    by_answer[index] = inode
        owners = _owners([pid for node in nodes for pid in node.workers], set(by_answer.values()))
        for index, inode in by_answer.items():
            results[index][0].worker = owners.get(inode)
    finally:
        for _, writer in results:
            if writer is not None:
                writer.close()
    return [answer for answer, _ in results]


def request_bytes(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Watch:
    """One state switch watched on every worker."""

    kind: str
    old: int
    new: int
    t0: float = 0.0
    seen: dict[int, float] = field(default_factory=dict)       # worker → first new-state answer arrived
    last_old: dict[int, float] = field(default_factory=dict)   # worker → latest old-state answer sent after t0
    regressions: int = 0
    unexpected: Counter[int] = field(default_factory=Counter)
    unattributed: int = 0
    answers: Counter[int] = field(default_factory=Counter)     # per worker
    round_ms: list[float] = field(default_factory=list)        # how long each probe round took

    def take(self, answers: list[Answer]) -> None:
        for answer in answers:
            if answer.status == 0:  # no answer within --timeout (or the connection failed)
                self.unexpected[0] += 1
                continue
            if answer.worker is None:
                self.unattributed += 1
                continue
            self.answers[answer.worker] += 1
            if answer.status == self.new:
                self.seen.setdefault(answer.worker, answer.arrived)
            elif answer.status == self.old:
                first_new = self.seen.get(answer.worker)
                if first_new is not None and answer.sent > first_new:
                    self.regressions += 1
                elif answer.sent >= self.t0:
                    self.last_old[answer.worker] = max(self.last_old.get(answer.worker, 0.0), answer.sent)
            else:
                self.unexpected[answer.status] += 1


async def until_all(nodes: list[Node], requests: dict[int, bytes], watch: Watch, args: argparse.Namespace,
                    state: int) -> bool:
    """Probe until every worker has answered `state` (watch.new: recorded in the watch)."""
    workers = {pid for node in nodes for pid in node.workers}
    deadline = time.monotonic() + args.timeout
    seen: set[int] = set()
    while (begun := time.monotonic()) < deadline:
        answers = await probe_round(nodes, requests, args.probes, args.timeout)
        for answer in answers:
            if answer.worker is not None and answer.worker not in workers:
                raise RuntimeError(f"an answer from pid {answer.worker}, not a known worker")
        if state == watch.new:
            watch.round_ms.append((time.monotonic() - begun) * 1000)
            watch.take(answers)
            if workers <= watch.seen.keys():
                return True
        else:
            seen |= {a.worker for a in answers if a.status == state and a.worker is not None}
            if workers <= seen:
                return True
        if args.interval:
            await asyncio.sleep(args.interval)
    return False


# ============================================================================ the changes

@dataclass
class Outcome:
    kind: str
    via: str
    api_ms: float
    upper_ms: float          # latest first new-state answer after t0 (inf: not everywhere in time)
    lower_ms: float          # latest old-state answer's send after t0
    regressions: int
    unexpected: Counter[int]
    unattributed: int
    answers: Counter[int]
    round_ms: list[float]


class Bench:
    def __init__(self, nodes: list[Node], seeded: Seeded, jwt_secret: str, args: argparse.Namespace) -> None:
        self.nodes, self.seeded, self.args = nodes, seeded, args
        self.alice = {"Authorization": f"Bearer {issue_token(jwt_secret, seeded.alice, lifetime_seconds=86400)}"}
        self.bob = {"Authorization": f"Bearer {issue_token(jwt_secret, seeded.bob, lifetime_seconds=86400)}"}
        self.session: aiohttp.ClientSession | None = None

    def requests(self, path: str, headers: dict[str, str]) -> dict[int, bytes]:
        return {node.port: request_bytes(node.port, path, headers) for node in self.nodes}

    def plugin_path(self, space: uuid.UUID, rest: str) -> str:
        return f"/spaces/{space}/plugins/{SLUG}{rest}"

    async def api(self, method: str, node: Node, path: str, body: dict[str, Any] | None, expect: int) -> float:
        """The call as alice; returns when its answer arrived."""
        assert self.session is not None
        async with self.session.request(method, f"{node.url}/api/v1{path}", json=body, headers=self.alice) as response:
            text = await response.text()
            answered = time.monotonic()
            if response.status != expect:
                raise RuntimeError(f"{method} {path} via {node.name}: {response.status} {text[:500]}")
        return answered

    async def measure(self, kind: str, via: Node, requests: dict[int, bytes],
                      method: str, path: str, body: dict[str, Any] | None, expect: int) -> Outcome:
        old, new = EXPECTED[kind]
        if not await until_all(self.nodes, requests, Watch(kind, old, new), self.args, old):
            raise RuntimeError(f"{kind}: not every worker answered {old} before the change")
        watch = Watch(kind, old, new)
        watch.t0 = time.monotonic()
        call = asyncio.create_task(self.api(method, via, path, body, expect))
        try:
            everywhere = await until_all(self.nodes, requests, watch, self.args, new)
        finally:
            answered = await call

        def ms(moment: float) -> float:
            return (moment - watch.t0) * 1000

        upper = ms(max(watch.seen.values())) if everywhere else math.inf
        lower = ms(max(watch.last_old.values())) if watch.last_old else 0.0
        return Outcome(kind, via.name, ms(answered), upper, lower, watch.regressions, watch.unexpected,
                       watch.unattributed, watch.answers, watch.round_ms)

    async def change(self, n: int, kind: str, counters: Counter[str]) -> list[Outcome]:
        via = self.nodes[n % len(self.nodes)]
        index = counters[kind]
        counters[kind] += 1
        s = self.seeded
        if kind == "route":
            route = f"/added-{index}"
            return [await self.measure(kind, via, self.requests(self.plugin_path(s.space_id, route), self.bob),
                                       "POST", f"/services/{s.service_id}/routes",
                                       {"route_path": route, "method": "GET", "target_url": "/ping"}, 201)]
        if kind == "installation":
            space, installation = s.installations[index]
            requests = self.requests(self.plugin_path(space, "/ping"), self.bob)
            path = f"/spaces/{space}/installations/{installation}"
            off = await self.measure(kind, via, requests, "PATCH", path, {"status": "inactive"}, 200)
            back = await self.measure("reactivation", via, requests, "PATCH", path, {"status": "active"}, 200)
            return [off, back]
        key_id, key = s.keys[index]
        return [await self.measure(kind, via, self.requests(self.plugin_path(s.space_id, "/ping"), {"X-API-Key": key}),
                                   "DELETE", f"/spaces/{s.space_id}/api-keys/{key_id}", None, 204)]

    async def run(self) -> list[Outcome]:
        kinds = [KINDS[n % len(KINDS)] for n in range(self.args.changes)]
        random.Random(self.args.seed).shuffle(kinds)
        outcomes: list[Outcome] = []
        counters: Counter[str] = Counter()
        async with aiohttp.ClientSession() as self.session:
            for n, kind in enumerate(kinds):
                done = await self.change(n, kind, counters)
                outcomes += done
                if (n + 1) % 10 == 0:
                    log(f"{n + 1}/{len(kinds)} changes; last {kind}: {done[0].upper_ms:.0f} ms")
        return outcomes


# ============================================================================ report

def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered[0] if ordered else math.nan
    if math.inf in ordered:  # nearest rank: an unfinished change is not interpolated away
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def fmt(value: float) -> str:
    return "not seen" if math.isinf(value) else f"{value:,.0f}"


def report(outcomes: list[Outcome], nodes: list[Node], args: argparse.Namespace, load: str, started: str) -> bool:
    counted = [o for o in outcomes if o.kind != "reactivation"]
    print(f"{len(counted)} registry changes through the API ({', '.join(f'{Counter(o.kind for o in counted)[k]} {k}' for k in KINDS)}; "
          f"seed {args.seed}), {len(nodes)} nodes x `gateway serve --workers {args.workers}` "
          f"({len(nodes) * args.workers} workers), one PostgreSQL, one Redis; probes: {args.probes} new connections "
          f"per node per round, {args.interval * 1000:.0f} ms between rounds.")
    print(f"Started {started}; {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
          f"load average at the start: {load}.\n")
    print("Milliseconds from sending the API call until the last of all workers had first answered the new "
          "state (p50, p99, max: the upper bound); *lower bound*: until the latest answer in the old state "
          "was sent, p50 / p99 (the true figure lies between the two).\n")
    print("| change | n | p50 ms | p99 ms | max ms | lower bound p50 / p99 ms | API call p50 ms | regressions | "
          "other answers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = [(kind, [o for o in outcomes if o.kind == kind]) for kind in (*KINDS, "reactivation")]
    rows.insert(3, ("all changes", counted))
    for label, group in rows:
        if not group:
            continue
        upper = [o.upper_ms for o in group]
        lower = [o.lower_ms for o in group]
        other = sum((o.unexpected for o in group), Counter())
        name = "installation reactivated (not counted)" if label == "reactivation" else label
        name = f"**{name}**" if label == "all changes" else name
        others = ", ".join(f"{status or 'no answer'}: {count}" for status, count in sorted(other.items())) or "-"
        print(f"| {name} | {len(group)} | {fmt(quantile(upper, 0.5))} | {fmt(quantile(upper, 0.99))} | "
              f"{fmt(max(upper))} | {quantile(lower, 0.5):,.0f} / {quantile(lower, 0.99):,.0f} | "
              f"{quantile([o.api_ms for o in group], 0.5):,.0f} | {sum(o.regressions for o in group)} | {others} |")
    per_worker = sum((o.answers for o in outcomes), Counter())
    unattributed = sum(o.unattributed for o in outcomes)
    print(f"\nProbe answers per worker, in the rounds after the API calls: "
          + "; ".join(f"{node.name} " + "/".join(f"{per_worker[pid]:,}" for pid in node.workers) for node in nodes)
          + f"; not attributed: {unattributed}.")
    rounds = [ms for o in outcomes for ms in o.round_ms]
    print(f"Probe rounds after the API calls: {len(rounds):,}, {quantile(rounds, 0.5):,.0f} ms each "
          f"(p50; p99 {quantile(rounds, 0.99):,.0f} ms), {len(rounds) / len(outcomes):.1f} per switch watched "
          f"({len(outcomes)}: the changes and the reactivations).")
    slowest = max(counted, key=lambda o: o.upper_ms)
    print(f"Slowest change: {slowest.kind} through {slowest.via}, {fmt(slowest.upper_ms)} ms (API call {slowest.api_ms:,.0f} ms).")
    p99 = quantile([o.upper_ms for o in counted], 0.99)
    met = p99 < 1000
    print(f"\nGoal p99 < 1 s: {'met' if met else 'NOT met'} (p99 {fmt(p99)} ms over {len(counted)} changes).")
    return met


# ============================================================================ main

async def main(args: argparse.Namespace) -> int:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    probe = redis.Redis.from_url(redis_url(args))
    try:
        if await probe.dbsize():
            raise SystemExit(f"Redis database {args.redis_db} at {args.redis} holds keys (someone else's?): "
                             "choose another with --redis-db")
    except redis.RedisError as exc:
        raise SystemExit(f"Redis at {redis_url(args)} does not answer: {exc}") from None
    processes: list[subprocess.Popen[Any]] = []
    nodes: list[Node] = []
    per_kind = {kind: args.changes // len(KINDS) + (1 if n < args.changes % len(KINDS) else 0)
                for n, kind in enumerate(KINDS)}
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-propagation-") as name:
            tmp = Path(name)
            async with database(args.database_url, tmp) as url:
                upstream_port = devservices.free_port()
                upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM_APP, str(upstream_port)],
                                            stdout=subprocess.DEVNULL, stderr=(tmp / "upstream.log").open("wb"),
                                            start_new_session=True)
                processes.append(upstream)
                try:
                    seeded = await seed(url, f"http://127.0.0.1:{upstream_port}", per_kind["installation"],
                                        per_kind["key"])
                    env, jwt_secret = node_env(args, url, tmp)
                    for n in range(args.nodes):
                        nodes.append(start_node(f"node{n + 1}", env, tmp))
                        processes.append(nodes[-1].process)
                    for node in nodes:
                        await asyncio.to_thread(wait_workers, node, args.workers)
                    log("nodes: " + "; ".join(f"{n.name} :{n.port} arbiter {n.process.pid} workers "
                                              f"{', '.join(map(str, n.workers))}" for n in nodes))
                    bench = Bench(nodes, seeded, jwt_secret, args)
                    warm = bench.requests(bench.plugin_path(seeded.space_id, "/ping"), bench.bob)
                    saved, args.timeout = args.timeout, 60.0  # the workers' first load
                    if not await until_all(nodes, warm, Watch("warm-up", 0, 0), args, 200):
                        raise RuntimeError("not every worker answered 200 on /ping within 60 s:\n"
                                           + "\n".join(n.output()[-2000:] for n in nodes))
                    args.timeout = saved
                    log(f"every worker serves; {args.changes} changes ...")
                    outcomes = await bench.run()
                    for node in nodes:
                        if sorted(children_of(node.process.pid)) != node.workers:
                            log(f"{node.name}'s workers changed during the run: {children_of(node.process.pid)}")
                finally:
                    for process in reversed(processes):
                        await asyncio.to_thread(stop_process, process)
                    if args.logs:
                        Path(args.logs).mkdir(parents=True, exist_ok=True)
                        for path in tmp.glob("*.log"):
                            shutil.copy(path, Path(args.logs) / path.name)
    finally:
        try:
            keys = [key async for key in probe.scan_iter(match="pgw:*", count=1000)]
            if keys:
                await probe.delete(*keys)
            left = await probe.dbsize()
            log(f"Redis db {args.redis_db}: {len(keys)} gateway key(s) deleted"
                + (f", {left} other key(s) left" if left else ""))
        finally:
            await probe.aclose()
    print()
    return 0 if report(outcomes, nodes, args, load, started) else 1


def run(args: argparse.Namespace) -> int:
    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main(args)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers per node")
    parser.add_argument("--probes", type=int, default=8, help="new connections per node per round")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between probe rounds")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a change may take to be seen everywhere")
    parser.add_argument("--seed", type=int, default=14, help="the order of the change kinds")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_DSN)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--logs", metavar="DIR", help="copy the nodes' and the upstream's logs there at the end")
    sys.exit(run(parser.parse_args()))
