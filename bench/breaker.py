#!/usr/bin/env python3
"""Circuit breakers against a hanging plugin upstream (issue 12), at a fixed request rate.

    python bench/breaker.py [--workers 2] [--rate 100] [--duration 15] [--failures 5] [--open-seconds 30]

One `gateway serve --workers N` (GATEWAY_BREAKER_FAILURES=--failures, GATEWAY_BREAKER_OPEN_SECONDS
=--open-seconds) serves two approved plugins, each installed in a space of its own and called by a
member of that space with an HS256 JWT (auth.jwt.issue_token). Both have the same route,
`/{rest:path}` → `/{rest}` with route option {"timeout": 1} (each failing call costs 1 s):

  healthy   its upstream answers every request at once (200, a small JSON): the reference run,
            the gateway's "normal" latency at this rate
  hanging   its upstream is a TCP server that accepts connections, reads what comes and never
            answers; it counts the connections it accepted (every call that reached it)

Each plugin is loaded for --duration seconds by an open-loop client: request i is sent at
t0 + i / --rate whatever the answers before it do, each on a new connection (so the workers share
the load as separate callers would), timed from its scheduled send time. Printed: a table per
second (sent, answers by status, p50/p99/max latency), then the summary: the hanging upstream's
accepted connections next to N x --failures, the answers before the breakers opened, and the
answers while they are open (status, Retry-After, latency) side by side with the reference run.

"While open" = the requests sent after the last answer that was not an open breaker's 503 arrived:
from then on no call of this plugin is in flight upstream in any worker. How many workers' breakers
are open at the end is read from the gateway's gateway_breaker_open gauge (summed over workers).

PostgreSQL: --dsn (default DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres) when it
answers: a database of its own there, created, migrated (db.migrate.migrate) and dropped at the
end, also on failure; else a throwaway cluster, stopped at the end. Both upstreams run in a thread
of this process (an event loop of their own); the gateway is stopped by its PID. Redis is not used.
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
import math
import re
import shlex
import signal
import statistics
import subprocess
import tempfile
import threading
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
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from db.migrate import migrate
from db.pool import create_pool
from gateway.dev import services as devservices
from tests.conftest import ENCRYPTION_KEYS, JWT_SECRET
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin

ROUTE_TIMEOUT = 1.0               # route option "timeout": what each failing call costs
CLIENT_TIMEOUT = 10.0             # past this the client gives up (counted as "no answer")
WARM_UP_SECONDS = 2.0             # healthy route, not counted
BREAKER_DETAIL = "The plugin is failing"  # the open breaker's problem detail (gateway/proxy/breaker.py)
HEALTHY_BODY = b'{"ok": true, "from": "healthy upstream"}'
HEALTHY_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(HEALTHY_BODY)).encode() + b"\r\n\r\n" + HEALTHY_BODY)


def log(message: str) -> None:
    print(f"[breaker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ upstreams

@dataclass
class Upstreams:
    """Both upstreams on loopback, served by an event loop in a thread of their own."""

    healthy_port: int = 0
    hanging_port: int = 0
    healthy_accepted: int = 0
    hanging_accepted: list[float] = field(default_factory=list)  # time.monotonic() of each accept
    hanging_bytes: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    async def _healthy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 server (keep-alive, GET without a body): 200 at once."""
        self.healthy_accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if m := re.search(rb"(?im)^content-length:\s*(\d+)", head):
                    await reader.readexactly(int(m.group(1)))
                writer.write(HEALTHY_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _hanging(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts, reads whatever comes, never answers; leaves when the gateway hangs up."""
        self.hanging_accepted.append(time.monotonic())
        try:
            while chunk := await reader.read(65536):
                self.hanging_bytes += len(chunk)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        healthy = await asyncio.start_server(self._healthy, "127.0.0.1", 0)
        hanging = await asyncio.start_server(self._hanging, "127.0.0.1", 0, backlog=1024)
        self.healthy_port = healthy.sockets[0].getsockname()[1]
        self.hanging_port = hanging.sockets[0].getsockname()[1]
        ready.set()
        async with healthy, hanging:
            await self._stop.wait()

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve(ready))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="upstreams", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the upstreams did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


# ============================================================================ database and gateway

@asynccontextmanager
async def database(dsn: str, tmp: Path) -> AsyncIterator[str]:
    """A migrated database of its own on `dsn`'s server (a throwaway cluster when that does not
    answer), dropped at the end, also on failure."""
    server = None
    if not await asyncio.to_thread(devservices.postgres_answers, dsn):  # it runs a loop of its own
        log(f"{dsn} does not answer: starting a throwaway PostgreSQL")
        server = devservices.start_postgres(tmp / "pgdata")
        dsn = server.dsn
    name = f"gateway_breaker_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        log(f"database {name} created")
        url = str(URL(dsn).with_path("/" + name))
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        log(f"database {name} dropped")
        if server is not None:
            server.stop(discard=True)


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

    def stop(self, within: float = 20.0) -> None:
        """SIGTERM to the arbiter's PID (it drains and stops its workers); SIGKILL to it and its
        own children (the workers, by PID) if it does not leave in time."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            for child in children_of(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.kill()
            self.process.wait()


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def start_gateway(url: str, args: argparse.Namespace, tmp: Path) -> Gateway:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    port, metrics_port = devservices.free_port(), devservices.free_port()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GATEWAY_", "REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"))}
    env = {**clean, "DATABASE_URL": url, "GATEWAY_JWT_SECRET": JWT_SECRET,
           "GATEWAY_ENCRYPTION_KEYS": ENCRYPTION_KEYS, "GATEWAY_ASSERTION_KEY": pem,
           "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port),
           "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the upstreams are on loopback
           "GATEWAY_BREAKER_FAILURES": str(args.failures),
           "GATEWAY_BREAKER_OPEN_SECONDS": str(args.open_seconds),
           "GATEWAY_DRAIN_SECONDS": "2", "TMPDIR": str(tmp)}
    log_path = tmp / "gateway.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", str(args.workers)],
                                   cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Gateway(process, port, metrics_port, log_path)


async def wait_listening(gateway: Gateway, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while "gateway listening on" not in gateway.output():
        if gateway.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start (exit {gateway.process.poll()}):\n{gateway.output()[-3000:]}")
        await asyncio.sleep(0.1)


async def until_every_worker_answers(gateway: Gateway, plugin: Plugin, workers: int) -> None:
    """200 from the healthy route on many fresh connections in a row (so every worker serves it)."""
    deadline = time.monotonic() + 60
    in_a_row = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while in_a_row < 20 * workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the healthy route never answered 200 steadily:\n{gateway.output()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(URL(gateway.url).with_path(str(plugin.path("/ping")), encoded=True),
                                       headers=plugin.member) as response:
                    await response.read()
                    in_a_row = in_a_row + 1 if response.status == 200 else 0
                    if response.status != 200:
                        await asyncio.sleep(0.1)


async def breaker_gauge(gateway: Gateway, slug: str) -> float | None:
    """gateway_breaker_open{service=slug} summed over the live workers (None: not readable)."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
        pattern = re.compile(r'^gateway_breaker_open\{service="' + re.escape(slug) + r'"\}\s+(\S+)$', re.M)
        return sum(float(m.group(1)) for m in pattern.finditer(text))
    return None


# ============================================================================ load

@dataclass
class Answer:
    at: float                  # scheduled send time, seconds after the run's start
    latency: float             # seconds from the scheduled send time to the whole answer read
    done: float                # when the answer was read, seconds after the run's start
    status: int | str          # HTTP status, or "no answer"
    kind: str                  # status as text; "503 breaker" / "503 pool" for the 503s
    retry_after: str | None = None


def kind_of(status: int, body: bytes) -> str:
    if status != 503:
        return str(status)
    with contextlib.suppress(ValueError, AttributeError):
        detail = str(orjson.loads(body).get("detail", ""))
        if detail.startswith(BREAKER_DETAIL):
            return "503 breaker"
        if "no connection to it became free" in detail:
            return "503 pool"
    return "503 other"


async def open_loop(gateway: Gateway, plugin: Plugin, rate: float, duration: float) -> list[Answer]:
    """Request i at t0 + i / rate, each on a new connection, never waiting for earlier answers."""
    url = URL(gateway.url).with_path(str(plugin.path("/items/42")), encoded=True)
    answers: list[Answer] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()

        async def one(scheduled: float) -> None:
            try:
                async with session.get(url, headers=plugin.member) as response:
                    body = await response.read()
                    now = time.perf_counter() - t0
                    answers.append(Answer(scheduled, now - scheduled, now, response.status,
                                          kind_of(response.status, body), response.headers.get("Retry-After")))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                now = time.perf_counter() - t0
                answers.append(Answer(scheduled, now - scheduled, now, "no answer", f"no answer ({type(exc).__name__})"))

        tasks = []
        for i in range(int(rate * duration)):
            scheduled = i / rate
            delay = scheduled - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    answers.sort(key=lambda a: a.at)
    return answers


# ============================================================================ report

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


def latency_cells(answers: list[Answer]) -> str:
    lat = [a.latency for a in answers]
    if not lat:
        return f"{'-':>8} | {'-':>8} | {'-':>8}"
    return f"{pct(lat, 0.5):>8.1f} | {pct(lat, 0.99):>8.1f} | {max(lat, default=float('nan')) * 1000:>8.1f}"


def ms(answers: list[Answer]) -> str:
    lat = [a.latency for a in answers]
    return f"{pct(lat, 0.5):.1f} / {pct(lat, 0.99):.1f} / {max(lat, default=float('nan')) * 1000:.1f}"


def by_kind(answers: list[Answer]) -> list[tuple[str, list[Answer]]]:
    kinds = sorted({a.kind for a in answers})
    return [(kind, [a for a in answers if a.kind == kind]) for kind in kinds]


def statuses(answers: list[Answer]) -> str:
    counts = Counter(a.kind for a in answers)
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())) or "-"


def per_second(title: str, answers: list[Answer], duration: float) -> list[str]:
    out = [f"### {title}", "", "| second (sent) | sent | answers | p50 ms | p99 ms | max ms |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
    for second in range(math.ceil(duration)):
        bucket = [a for a in answers if second <= a.at < second + 1]
        out.append(f"| {second:>2}–{second + 1:<2} | {len(bucket):>4} | {statuses(bucket)} | {latency_cells(bucket)} |")
    return out


def report(args: argparse.Namespace, reference: list[Answer], hanging: list[Answer], upstreams: Upstreams,
           t0_hanging: float, gauge: float | None, healthy_slug: str, hanging_slug: str) -> str:
    bound = args.workers * args.failures
    accepted = upstreams.hanging_accepted
    accepted_at = [t - t0_hanging for t in accepted]
    not_breaker = [a for a in hanging if a.kind != "503 breaker"]
    opened_at = max((a.done for a in not_breaker), default=0.0)  # the last answer not from an open breaker
    before = [a for a in hanging if a.at <= opened_at]
    while_open = [a for a in hanging if a.at > opened_at]
    first_breaker = min((a.at for a in hanging if a.kind == "503 breaker"), default=float("nan"))
    waited = [a for a in hanging if a.status == 504 and a.latency > ROUTE_TIMEOUT + 0.1]
    with_retry = [a for a in while_open if a.retry_after is not None]
    retry_values = sorted({int(a.retry_after) for a in with_retry if a.retry_after and a.retry_after.isdigit()})
    share_503 = sum(1 for a in while_open if a.status == 503) / len(while_open) if while_open else float("nan")
    ref_200 = sum(1 for a in reference if a.status == 200) / len(reference) if reference else float("nan")

    out = [f"`gateway serve --workers {args.workers}`, GATEWAY_BREAKER_FAILURES={args.failures}, "
           f"GATEWAY_BREAKER_OPEN_SECONDS={args.open_seconds:g}; route option {{\"timeout\": {ROUTE_TIMEOUT:g}}}; "
           f"open loop at {args.rate:g} req/s for {args.duration:g} s per plugin, a new connection per request, "
           f"latency from each request's scheduled send time; {os.cpu_count()} CPUs, client and upstreams on the "
           "same machine.", ""]
    out += per_second(f"Reference: plugin `{healthy_slug}`, healthy upstream", reference, args.duration) + [""]
    out += per_second(f"Hanging upstream: plugin `{hanging_slug}`", hanging, args.duration) + [""]
    verdict = "within" if len(accepted) <= bound else "EXCEEDS"
    spread = (f"accepted between +{min(accepted_at):.2f} s and +{max(accepted_at):.2f} s after the load started"
              if accepted_at else "none accepted")
    out += ["### Summary", "",
            f"- Hanging upstream: **{len(accepted)} accepted connections** vs N × GATEWAY_BREAKER_FAILURES = "
            f"{args.workers} × {args.failures} = {bound}: {verdict} the bound ({spread}; "
            f"{upstreams.hanging_bytes:,} request bytes read, nothing answered).",
            f"- Before the breakers opened (requests sent until +{opened_at:.2f} s, when the last answer that was "
            f"not an open breaker's arrived): {len(before)} requests; "
            + "; ".join(f"{kind}: {len(group)}, latency p50 / p99 / max {ms(group)} ms"
                        for kind, group in by_kind(before))
            + f". First open-breaker 503 for a request sent at +{first_breaker:.2f} s. Each worker admits "
            f"{args.failures} calls not yet vouched for by an answer; the calls sent after them waited (at most "
            f"the route's timeout, {ROUTE_TIMEOUT:g} s) and got the 503 as soon as those {args.failures} failed."
            + (f" {len(waited)} of the 504s took longer than the timeout + 0.1 s: they first waited for a pooled "
               "connection (one space may hold GATEWAY_UPSTREAM_POOL_PER_HOST × GATEWAY_UPSTREAM_SPACE_SHARE = "
               "64 × 0.5 per worker by default), then still reached the upstream." if waited else ""),
            f"- While open (sent after +{opened_at:.2f} s): {len(while_open)} requests: {statuses(while_open)}; "
            f"status 503 share {share_503:.1%}; Retry-After present on {len(with_retry)}/{len(while_open)} "
            f"(values {retry_values[0] if retry_values else '-'}–{retry_values[-1] if retry_values else '-'} s).",
            f"- gateway_breaker_open{{service=\"{hanging_slug}\"}} after the run (sum over the workers): "
            f"{'not read' if gauge is None else f'{gauge:g}'}, i.e. open in that many of the {args.workers} workers "
            "(a worker that never saw its threshold of failures keeps its breaker closed).",
            "",
            "| at the same rate | reference: healthy upstream | hanging upstream, breakers open |",
            "| --- | ---: | ---: |",
            f"| requests | {len(reference)} | {len(while_open)} |",
            f"| answers | {statuses(reference)} | {statuses(while_open)} |",
            f"| share of the expected status | 200: {ref_200:.1%} | 503: {share_503:.1%} |",
            f"| Retry-After present | - | {len(with_retry)}/{len(while_open)} |"]
    ref_lat, open_lat = [a.latency for a in reference], [a.latency for a in while_open]
    for label, q in (("p50 ms", 0.5), ("p99 ms", 0.99)):
        out.append(f"| {label} | {pct(ref_lat, q):.1f} | {pct(open_lat, q):.1f} |")
    out.append(f"| max ms | {max(ref_lat, default=float('nan')) * 1000:.1f} | "
               f"{max(open_lat, default=float('nan')) * 1000:.1f} |")
    return "\n".join(out)


# ============================================================================ main

async def run(args: argparse.Namespace, tmp: Path) -> str:
    upstreams = Upstreams()
    upstreams.start()
    gateway: Gateway | None = None
    try:
        log(f"upstreams on 127.0.0.1: healthy :{upstreams.healthy_port}, hanging :{upstreams.hanging_port}")
        async with database(args.dsn, tmp) as url:
            pool = await create_pool(url, min_size=1, max_size=2)
            try:
                make = Factory(pool, JWT_SECRET)
                options = {"timeout": ROUTE_TIMEOUT}
                healthy = await make_plugin(pool, make, f"http://127.0.0.1:{upstreams.healthy_port}", options=options)
                hanging = await make_plugin(pool, make, f"http://127.0.0.1:{upstreams.hanging_port}", options=options)
            finally:
                await pool.close()
            log(f"plugins {healthy.slug} (healthy) and {hanging.slug} (hanging), route /{{rest:path}}, {options}")
            gateway = start_gateway(url, args, tmp)
            await wait_listening(gateway)
            log(f"gateway arbiter pid {gateway.process.pid} on port {gateway.port}, {args.workers} workers")
            await until_every_worker_answers(gateway, healthy, args.workers)
            log(f"warm-up: {WARM_UP_SECONDS:g} s at {args.rate:g} req/s on the healthy plugin (not counted)")
            await open_loop(gateway, healthy, args.rate, WARM_UP_SECONDS)
            log(f"reference: {args.duration:g} s at {args.rate:g} req/s on the healthy plugin")
            reference = await open_loop(gateway, healthy, args.rate, args.duration)
            log(f"hanging: {args.duration:g} s at {args.rate:g} req/s on the hanging plugin")
            t0_hanging = time.monotonic()
            hanging_answers = await open_loop(gateway, hanging, args.rate, args.duration)
            gauge = await breaker_gauge(gateway, hanging.slug)
            gateway.stop()
            log("gateway stopped")
            return report(args, reference, hanging_answers, upstreams, t0_hanging, gauge, healthy.slug, hanging.slug)
    finally:
        if gateway is not None:
            gateway.stop()
        upstreams.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (default 2)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per plugin (default 15)")
    parser.add_argument("--failures", type=int, default=5, help="GATEWAY_BREAKER_FAILURES (default 5)")
    parser.add_argument("--open-seconds", type=float, default=30.0,
                        help="GATEWAY_BREAKER_OPEN_SECONDS (default 30: longer than the run, no trial call)")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server to create the bench database on (default DATABASE_URL, "
                             "else postgresql://postgres@127.0.0.1:5432/postgres)")
    args = parser.parse_args()
    if args.workers < 1 or args.rate <= 0 or args.duration < 2 or args.failures < 1:
        parser.error("--workers and --failures at least 1, --rate above 0, --duration at least 2 s")
    return args


def main() -> int:
    args = parse_args()

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="gateway-breaker-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # a throwaway cluster runs as `postgres` when started by root
        try:
            text = asyncio.run(run(args, tmp))
        except KeyboardInterrupt:
            log("interrupted: everything started was stopped, the database dropped")
            return 130
    command = "python bench/breaker.py " + shlex.join(sys.argv[1:])
    print(f"{started:%Y-%m-%d %H:%M} UTC, `{command.strip()}`\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
