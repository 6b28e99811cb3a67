#!/usr/bin/env python3
"""Benchmark the gateway's proxy against nginx and a bare aiohttp proxy, side by side.

    python bench/run.py [--duration 10] [--rounds 3] [--quick] [--profile]

Starts (and stops again, also on Ctrl-C or errors) everything it measures:
  upstream      nginx answering a fixed ~100-byte JSON, called directly
  nginx-proxy   a second nginx, a plain reverse proxy to it (upstream keep-alive on)
  bare-aiohttp  bench/bare_proxy.py: one process, one ClientSession, no checks
  gateway       `gateway serve` (one process) with the full pipeline: an approved service whose
                route targets the upstream, installed in a space with an api_key credential,
                called by a space member with an HS256 JWT through /spaces/{space}/plugins/{slug}
  gateway-redis, gateway-limited, gateway-cached
                a second `gateway serve` (one process, REDIS_URL set, its own database) with three
                routes of the same plugin: no limit, a rate limit never reached (counted in Redis),
                and a response cache that every measured request HITs
  nginx-cache   a third nginx, a reverse proxy with proxy_cache answering from its cache
Each is loaded with wrk (2 threads, 8 and 64 connections) in alternating rounds. Then the
gateway's table grows to 10,000 routes, and (--profile) py-spy records where its time goes.
See bench/README.md. Results are printed and written to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _in_project_env() -> bool:
    try:
        import asyncpg  # noqa: F401
        import gateway  # noqa: F401
    except ImportError:
        return False
    return True


if not _in_project_env() and VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from auth.jwt import issue_token  # noqa: E402
from db.encryption import generate_key_ring_entry  # noqa: E402
from db.migrate import migrate  # noqa: E402
from gateway.dev import services as devservices  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_THREADS = 2
UPSTREAM_BODY = ('{"id":42,"name":"Quarterly report","status":"ok","items":[1,2,3],'
                 '"owner":"acme","generated":"2025-01-01T00:00:00Z"}')
UPSTREAM_PATH = "/v1/reports/42"
PLUGIN_SLUG = "bench-reports"
EXTRA_SERVICES = 99
EXTRA_ROUTES_PER_SERVICE = 100
EXTRA_ROUTES_SAME_SERVICE = 99  # 99 * 100 + 99 + the benchmarked route = 10,000
TARGET_ROUTES = 1 + EXTRA_SERVICES * EXTRA_ROUTES_PER_SERVICE + EXTRA_ROUTES_SAME_SERVICE
GOAL_RATIO_BARE = 0.75
GOAL_P99_MS_AT_8 = 3.0
GOAL_10K_COST = 0.05
# The Redis-backed gateway (rate limiter and response cache targets).
LIMITED_ROUTE = "/limited/{id}"        # rate_limit BENCH_RATE_LIMIT per BENCH_RATE_WINDOW s: never reached
CACHED_ROUTE = "/cached/{id}"          # cache_enabled, cache_ttl BENCH_CACHE_TTL: every measured request HITs
BENCH_RATE_LIMIT = 1_000_000_000
BENCH_RATE_WINDOW = 3600
BENCH_CACHE_TTL = 3600
DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_REDIS_DB = 7
GOAL_LIMITER_COST = 0.10
GOAL_CACHE_VS_BARE = 1.5
# The table "Throughput and latency" and its ratios: the issue-3 figure, unchanged.
MAIN_TARGETS = ("upstream", "nginx-proxy", "bare-aiohttp", "gateway")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process this run starts, stopped in reverse order by its own pid (and, for a
    process that leaves children, its own session: each is started in a new session)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, command: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(log_path, "wb")
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        except BaseException:
            out.close()
            raise
        self.started.append((name, proc, out))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for index, (name, known, out) in enumerate(self.started):
            if known is proc:
                del self.started[index]
                self._stop(name, proc, out)
                return

    @staticmethod
    def _stop(name: str, proc: subprocess.Popen[bytes], out: Any) -> None:
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) did not stop on SIGTERM; killing it")
                    proc.kill()
                    proc.wait(timeout=5)
            # nginx workers live in the master's session (= its pid): make sure none is left.
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                pass
            else:
                time.sleep(0.5)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            out.close()

    def stop_all(self) -> None:
        while self.started:
            name, proc, out = self.started.pop()
            try:
                self._stop(name, proc, out)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"could not stop {name} (pid {proc.pid}): {exc}")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from the 3rd (state) on


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of the processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def machine_busy_seconds() -> float:
    """CPU seconds spent on anything but idle/iowait, all cores, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path | None, within: float = 30.0,
              ok: Callable[[int, bytes], bool] = lambda status, body: status < 500) -> None:
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while starting:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except OSError as exc:
            last = str(exc)
            time.sleep(0.1)
            continue
        if ok(status, body):
            return
        last = f"{status} {body[:300]!r}"
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {within}s (last: {last})\n{tail(log_path)}")


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as log_file:
        log_file.seek(max(0, path.stat().st_size - 64 * 1024))
        return "\n".join(log_file.read().decode(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------- nginx

NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}
}}
"""

NGINX_UPSTREAM = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{json}';
        }}
    }}"""

NGINX_PROXY = """\
    upstream plugin {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://plugin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


NGINX_CACHE = """\
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=2h use_temp_path=off;
    upstream plugin {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://plugin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}"""


def start_nginx(procs: Processes, name: str, prefix: Path, body: str) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx not found: apt-get install -y nginx")
    prefix.mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(prefix=prefix, body=body))
    return procs.start(name, [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
                       prefix / "stdout.log")


# ----------------------------------------------------------------------------- database and seed rows

def database_url_answers() -> str:
    dsn = os.environ.get("DATABASE_URL", "")
    return dsn if dsn and devservices.postgres_answers(dsn) else ""


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Seed:
    vendor: str = ""
    admin: str = ""
    owner: str = ""
    member: str = ""
    space: str = ""
    service_id: str = ""
    installation_id: str = ""
    routes: dict[str, str] = field(default_factory=dict)  # route_path → route id


async def seed_host_rows(dsn: str) -> Seed:
    """The rows the host platform owns: users, a space, its owner and a plain member."""
    conn = await asyncpg.connect(dsn)
    try:
        seed = Seed()
        for role in ("vendor", "admin", "owner", "member"):
            uid = await conn.fetchval("INSERT INTO users (email, display_name) VALUES ($1, $2) RETURNING id",
                                      f"bench-{role}@bench.local", f"Bench {role}")
            setattr(seed, role, str(uid))
        seed.space = str(await conn.fetchval("INSERT INTO spaces (name) VALUES ('Bench space') RETURNING id"))
        for user, role in ((seed.owner, "owner"), (seed.member, "member")):
            await conn.execute("INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, $3)",
                               seed.space, user, role)
        return seed
    finally:
        await conn.close()


async def register_through_api(base: str, secret: str, seed: Seed, upstream: str,
                               extra_routes: tuple[dict[str, Any], ...] = ()) -> None:
    """Vendor registers the plugin and its route, a platform admin approves it, the space owner
    installs it with an api_key credential: the same calls as tests/e2e/test_proxy_flow.py.
    `extra_routes`: more routes of the same plugin (bodies of POST .../routes), registered alike."""
    def auth(user: str, admin: bool = False) -> dict[str, str]:
        token = issue_token(secret, user, roles=["platform_admin"] if admin else None, lifetime_seconds=3600)
        return {"Authorization": f"Bearer {token}"}

    async with aiohttp.ClientSession(base) as http:
        async def call(method: str, path: str, headers: dict[str, str], body: dict[str, Any], expect: int) -> Any:
            async with http.request(method, path, json=body, headers=headers) as response:
                text = await response.text()
                if response.status != expect:
                    raise RuntimeError(f"{method} {path} answered {response.status}: {text}")
                return json.loads(text)

        service = await call("POST", "/api/v1/services", auth(seed.vendor), {
            "name": "Bench reports", "slug": PLUGIN_SLUG, "version": "1.0", "provider": "Bench",
            "api_base_url": upstream + "/v1", "api_auth_type": "api_key",
            "api_auth_config": {"header_name": "X-Plugin-Key"}}, 201)
        seed.service_id = service["id"]
        for route in ({"route_path": "/reports/{id}", "method": "GET", "target_url": "/reports/{id}"},
                      *extra_routes):
            created = await call("POST", f"/api/v1/services/{seed.service_id}/routes", auth(seed.vendor), route, 201)
            seed.routes[route["route_path"]] = created["id"]
        await call("PUT", f"/api/v1/services/{seed.service_id}/status", auth(seed.admin, admin=True),
                   {"status": "approved"}, 200)
        installation = await call("POST", f"/api/v1/spaces/{seed.space}/installations", auth(seed.owner),
                                  {"service_id": seed.service_id,
                                   "credentials": {"api_key": "bench-plugin-secret"}}, 201)
        seed.installation_id = installation["id"]


async def insert_extra_routes(dsn: str, seed: Seed, upstream: str) -> int:
    """9,999 more approved routes, straight into the tables: 99 other services with 100 routes
    each, and 99 more routes of the benchmarked service, some beside and below its route."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            services = await conn.fetch(
                """INSERT INTO service_registry (name, slug, version, provider, status, api_base_url,
                                                 api_auth_type, api_auth_config)
                   SELECT 'Bench extra ' || i, 'bench-extra-' || lpad(i::text, 3, '0'), '1.0', 'Bench',
                          'approved', $1, 'api_key', '{"header_name": "X-Plugin-Key"}'::jsonb
                   FROM generate_series(1, $2::int) AS i RETURNING id""",
                upstream + "/v1", EXTRA_SERVICES)
            rows: list[tuple[str, str, str, str]] = []
            for service in services:
                for j in range(EXTRA_ROUTES_PER_SERVICE):
                    path, target = [
                        (f"/r{j}", f"/r{j}"),
                        (f"/r{j}/{{id}}", f"/r{j}/{{id}}"),
                        (f"/r{j}/{{id}}/detail", f"/r{j}/{{id}}/detail"),
                        (f"/r{j}/files/{{rest:path}}", f"/r{j}/files/{{rest}}"),
                    ][j % 4]
                    rows.append((str(service["id"]), path, "GET" if j % 5 else "POST", target))
            for j in range(EXTRA_ROUTES_SAME_SERVICE):
                path, method = [
                    (f"/reports/{{id}}/v{j}", "GET"),  # below the benchmarked template
                    (f"/reports/s{j}", "GET"),         # static siblings of its parameter
                    (f"/x{j}/{{id}}", "POST"),
                ][j % 3]
                rows.append((seed.service_id, path, method, path))
            await conn.execute(
                """INSERT INTO service_api_routes (service_id, route_path, method, target_url)
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])""",
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return int(await conn.fetchval("SELECT count(*) FROM service_api_routes"))
    finally:
        await conn.close()


GC_PROBE = r"""
import asyncio, gc, json, sys, time
import asyncpg
import gateway.app  # noqa: F401 - the gateway's modules loaded, for a comparable heap
from db import proxy_state
from routing.loader import build_state

async def load(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        for kind in ("json", "jsonb"):  # as the gateway's pool decodes them (db.pool)
            await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return await proxy_state.load(conn)
    finally:
        await conn.close()

routes, installations, _assignments = asyncio.run(load(sys.argv[1]))

def measure(rows):
    state = build_state(rows, installations)
    gc.collect()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    result = {"routes": state.table.size, "tracked": len(gc.get_objects()), "full_gc_ms": sorted(times)[2] * 1e3}
    del state
    gc.collect()
    return result

one = [r for r in routes if r["service_slug"] == sys.argv[2] and r["route_path"] == "/reports/{id}"]
print(json.dumps([measure(one), measure(routes)]))
"""


def gc_probe(dsn: str) -> list[dict[str, Any]] | str:
    """How long one full garbage collection takes in a process holding the gateway's proxy state
    built from these rows, with the benchmarked route alone and with all of them."""
    try:
        done = subprocess.run([sys.executable, "-c", GC_PROBE, dsn, PLUGIN_SLUG], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        if done.returncode != 0:
            return f"probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return f"probe failed: {exc}"


def assertion_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def readyz(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


# ----------------------------------------------------------------------------- Redis

class BenchRedis:
    """The Redis database the Redis-backed gateway uses. The run refuses a database that holds
    any key when it starts (someone else's), and at the end deletes the keys the gateway made
    there (prefix `pgw:`) and nothing else. Redis itself is never started or stopped here."""

    PREFIX = "pgw:"

    def __init__(self, base_url: str, db: int) -> None:
        import redis

        parts = urlsplit(base_url)
        self.url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))
        self.display = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""),
                                   f"/{db}", "", "")) if parts.hostname else self.url
        self.db = db
        self.client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        self.used = False  # set once the database was found empty: only then is cleanup ours to do

    def claim(self) -> None:
        import redis

        try:
            size = int(self.client.dbsize())
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis at {self.display} does not answer ({exc}); start it, pick another with "
                               "--redis, or leave the limiter and cache targets out with --skip-redis") from None
        if size:
            raise RuntimeError(f"Redis database {self.db} holds {size} keys that are not this run's: pick an "
                               "empty one with --redis-db N")
        self.used = True

    def info(self) -> dict[str, Any]:
        return dict(self.client.info("server")) | dict(self.client.info("cpu"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole Redis server (all its threads), from INFO."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def keys(self, pattern: str) -> list[bytes]:
        return list(self.client.scan_iter(match=pattern, count=1000))

    def counter_total(self) -> int:
        """The sum of the rate limiter's window counters (pgw:rl:*)."""
        keys = self.keys(self.PREFIX + "rl:*")
        return sum(int(v) for v in self.client.mget(keys) if v is not None) if keys else 0

    def cleanup(self) -> int:
        """Delete this run's keys (prefix pgw:) in this database; returns how many."""
        if not self.used:
            return 0
        deleted = 0
        keys = self.keys(self.PREFIX + "*")
        for start in range(0, len(keys), 500):
            deleted += int(self.client.delete(*keys[start:start + 500]))
        return deleted

    def close(self) -> None:
        self.client.close()


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape_metrics(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The samples of some metric families from a Prometheus text page, by `name{labels}`."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and match.group(1).startswith(names):
            try:
                found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
            except ValueError:
                pass
    return found


def sum_metric(samples: dict[str, float], name: str, *label_parts: str) -> float:
    """Sum of the samples of `name` whose labels contain every one of `label_parts`."""
    total = 0.0
    for key, value in samples.items():
        base, _, labels = key.partition("{")
        if base == name and all(part in labels for part in label_parts):
            total += value
    return total


# The Redis-backed gateway's targets: one process, three routes of the same plugin.
REDIS_TARGETS = {
    "gateway-redis": "gateway + Redis, route without limit",
    "gateway-limited": "gateway + Redis, rate-limited route (limit never reached)",
    "gateway-cached": "gateway + Redis, cached route (HIT)",
}
# The gateway's counters read around each run of a Redis-backed target.
GATEWAY_COUNTERS = ("gateway_rate_limit_fallback_total", "gateway_rate_limited_total",
                    "gateway_dependency_errors_total", "gateway_cache_total", "gateway_requests_total")


# ----------------------------------------------------------------------------- wrk

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_JSON {\"requests\": %.0f, \"duration_us\": %.0f, \"bytes\": %.0f, "
    .. "\"connect\": %.0f, \"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, "
    .. "\"p50_us\": %.0f, \"p90_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def write_wrk_script(path: Path, headers: dict[str, str]) -> Path:
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


@dataclass
class Target:
    key: str
    label: str
    url: str
    script: Path
    server_pids: Callable[[], list[int]]
    upstream_pids: Callable[[], list[int]] | None = None
    redis_cpu: Callable[[], float] | None = None  # the Redis server's CPU seconds so far (INFO cpu)
    counters: Callable[[], dict[str, float]] | None = None  # read before and after the run, not timed


@dataclass
class Run:
    target: str
    connections: int
    phase: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    non_2xx: int
    server_cpu: float
    upstream_cpu: float
    wrk_cpu: float
    other_cpu: float
    wall: float
    server_sys: float = 0.0
    redis_cpu: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)  # the target's counters: after − before
    round: int = 0

    @property
    def server_sys_share(self) -> float:
        return self.server_sys / self.server_cpu if self.server_cpu else 0.0


def wrk_available() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found: apt-get install -y wrk")
    return wrk


RUN_ENDS: dict[str, list[float]] = {}


def run_wrk(target: Target, connections: int, duration: int, phase: str, *, quiet: bool = False) -> Run:
    command = [wrk_available(), f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--latency",
               "--timeout", "5s", "-s", str(target.script), target.url]
    server = target.server_pids()
    upstream = target.upstream_pids() if target.upstream_pids else []
    counters_before = target.counters() if target.counters else {}
    redis_before = target.redis_cpu() if target.redis_cpu else 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, upstream_before = cpu_split(server), cpu_seconds(upstream)
    busy_before, wall_before = machine_busy_seconds(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - wall_before
    busy = machine_busy_seconds() - busy_before
    server_after = cpu_split(server)
    server_sys = server_after[1] - server_before[1]
    server_cpu = sum(server_after) - sum(server_before)
    upstream_cpu = cpu_seconds(upstream) - upstream_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime
               - children_before.ru_utime - children_before.ru_stime)
    redis_cpu = target.redis_cpu() - redis_before if target.redis_cpu else 0.0
    counters_after = target.counters() if target.counters else {}
    counters = {key: value - counters_before.get(key, 0.0) for key, value in counters_after.items()
                if value != counters_before.get(key, 0.0)}
    found = re.search(r"^BENCH_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}) on {target.url}:\n{done.stdout}\n{done.stderr}")
    RUN_ENDS.setdefault(target.key, []).append(time.time())
    data = json.loads(found.group(1))
    errors = int(data["connect"] + data["read"] + data["write"] + data["timeout"])
    run = Run(target=target.key, connections=connections, phase=phase,
              rps=data["requests"] / (data["duration_us"] / 1e6),
              p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000, p99_ms=data["p99_us"] / 1000,
              max_ms=data["max_us"] / 1000, requests=int(data["requests"]), errors=errors,
              non_2xx=int(data["status"]), server_cpu=server_cpu, upstream_cpu=upstream_cpu, wrk_cpu=wrk_cpu,
              other_cpu=max(0.0, busy - server_cpu - upstream_cpu - wrk_cpu - redis_cpu), wall=wall,
              server_sys=server_sys, redis_cpu=redis_cpu, counters=counters)
    if not quiet:
        flag = "" if not (errors or run.non_2xx) else f"  !! {errors} socket errors, {run.non_2xx} non-2xx"
        extra = f", redis {redis_cpu:4.2f}s" if target.redis_cpu else ""
        fallbacks = sum_metric(counters, "gateway_rate_limit_fallback_total")
        if fallbacks:
            flag += f"  !! {fallbacks:,.0f} rate-limit decisions without Redis"
        log(f"  {target.key:<15} c={connections:<3} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
            f"p99 {run.p99_ms:6.2f} ms  cpu {server_cpu:5.2f}s (+upstream {upstream_cpu:4.2f}s{extra}, "
            f"other {run.other_cpu:4.2f}s){flag}")
    return run


# ----------------------------------------------------------------------------- profile

PROFILE_RATE = 200  # samples per second
# (function name, file suffix, label, depth): the gateway's request path, outermost first.
PIPELINE_FRAMES = [
    ("problem_middleware", "gateway/middleware.py", "problem_middleware: the whole proxied request in the app", 0),
    ("_log_access", "gateway/middleware.py", "_log_access (the access-log line)", 1),
    ("handle_proxy", "gateway/proxy/pipeline.py", "handle_proxy", 1),
    ("parse_target", "gateway/proxy/target.py", "parse_target", 2),
    ("authenticate", "gateway/proxy/stages.py", "authenticate (JWT cache, user cache)", 2),
    ("authorize", "gateway/proxy/stages.py", "authorize (role cache, installation)", 2),
    ("route", "gateway/proxy/stages.py", "route (route table match)", 2),
    ("forward", "gateway/proxy/forward.py", "forward", 2),
    ("upstream_request_headers", "gateway/proxy/headers.py", "upstream_request_headers", 3),
    ("_forwarded_headers", "gateway/proxy/forward.py", "_forwarded_headers", 3),
    ("_identity_headers", "gateway/proxy/forward.py", "_identity_headers (assertion, cached)", 3),
    ("UpstreamAuth.headers", "gateway/proxy/upstream_auth.py", "UpstreamAuth.headers (credential)", 3),
    ("_open_upstream", "gateway/proxy/forward.py", "_open_upstream (the upstream call, to its headers)", 3),
    ("ClientSession._request", "aiohttp/client.py", "ClientSession._request", 4),
    ("downstream_response_headers", "gateway/proxy/headers.py", "downstream_response_headers", 3),
    ("StreamResponse.prepare", "aiohttp/web_response.py", "StreamResponse.prepare (response headers out)", 3),
    ("StreamResponse.write", "aiohttp/web_response.py", "StreamResponse.write (body out)", 3),
    ("StreamResponse.write_eof", "aiohttp/web_response.py", "StreamResponse.write_eof", 3),
    ("observe", "gateway/proxy/observe.py", "observe (metrics)", 2),
]
OWN_CODE = ("gateway/", "auth/", "routing/", "db/")
# (function name, file suffix, label): the limiter's and the cache's parts, for the Redis-backed gateway.
LIMITER_CACHE_FRAMES = [
    ("handle_proxy", "gateway/proxy/pipeline.py", "handle_proxy (the whole pipeline)"),
    ("authenticate", "gateway/proxy/stages.py", "authenticate"),
    ("rate_limit", "gateway/proxy/stages.py", "rate_limit stage (waits for Redis's count)"),
    ("RateLimiter.check", "gateway/proxy/ratelimit.py", "RateLimiter.check"),
    ("Decision.headers", "gateway/proxy/ratelimit.py", "Decision.headers (the RateLimit headers)"),
    ("_IncrBatcher._send", "gateway/proxy/ratelimit.py", "_IncrBatcher._send (the pipeline to Redis, its own task)"),
    ("Pipeline.execute", "redis/asyncio/client.py", "redis-py Pipeline.execute"),
    ("cached", "gateway/proxy/caching.py", "cached (the cache stage)"),
    ("cache_key", "gateway/proxy/cache.py", "cache_key"),
    ("ResponseCache.get", "gateway/proxy/cache.py", "ResponseCache.get"),
    ("_serve", "gateway/proxy/caching.py", "_serve (the stored answer out)"),
    ("forward", "gateway/proxy/forward.py", "forward (the upstream call)"),
    ("_log_access", "gateway/middleware.py", "_log_access (the access-log line)"),
    ("observe", "gateway/proxy/observe.py", "observe (metrics)"),
]


def _frame_parts(frame: str) -> tuple[str, str]:
    """'name (path/file.py:12)' → ('name', 'path/file.py')."""
    found = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    return (found.group(1), found.group(2)) if found else (frame, "")


def _component(path: str) -> str:
    """A coarse owner for a frame's file: the event loop, aiohttp's server or client side, our code."""
    parts = path.replace("\\", "/").split("/")
    name = parts[-1]
    if path.startswith("<attrs generated") and "aiohttp.client" in path:
        return "aiohttp client"  # e.g. the per-request ClientTimeout
    if path.startswith("<frozen"):
        return "stdlib (frozen modules)"
    if "aiohttp" in parts:
        if name.startswith("client") or name in ("connector.py", "streams.py", "tracing.py"):
            return "aiohttp client"
        if name.startswith("web") or name in ("http_writer.py", "http_parser.py", "base_protocol.py"):
            return "aiohttp server"
        return "aiohttp (other)"
    if "asyncio" in parts or name == "selectors.py":
        return "asyncio event loop and sockets"
    if parts[0] == "gateway":
        return "gateway/proxy" if len(parts) > 2 and parts[1] == "proxy" else "/".join(parts)
    if parts[0] in ("auth", "routing", "db"):
        return parts[0]
    for lib in ("yarl", "multidict", "jwt", "cachetools", "cryptography", "asyncpg", "propcache",
                "prometheus_client", "redis"):
        if lib in parts:
            return lib
    if name == "__init__.py" and len(parts) > 1:
        return parts[-2]  # re/__init__.py → re, logging/__init__.py → logging
    return name or "?"


def is_python_frame(frame: str) -> bool:
    """'f (pkg/mod.py:12)', '<module> (gateway:1)', 'f (<string>:2)' are Python; 'send (libc.so.6)' and
    'sock_call_ex (socketmodule.c:921)' (CPython built with debug info) are native."""
    file = _frame_parts(frame)[1]
    return file.endswith(".py") or file.startswith("<") or ("." not in file and file != "")


GC_FRAME = "gc_collect_main ("
GC = "[garbage collector]"


def summarize_profile(raw: Path) -> dict[str, Any]:
    """Python-level shares from a `py-spy record --native --function --format raw` file. Samples
    inside CPython's cyclic garbage collector (gc_collect_main) get a component of their own."""
    stacks: list[tuple[list[str], int, bool, str]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        python = [f for f in frames if is_python_frame(f)]
        if not python:
            continue
        if python[-1].startswith("_worker (concurrent/futures/thread.py"):
            continue  # an executor thread waiting for work: idle, whatever py-spy thinks
        native_leaf = "" if is_python_frame(frames[-1]) else frames[-1]
        stacks.append((python, int(count), any(f.startswith(GC_FRAME) for f in frames), native_leaf))
    total = sum(count for _, count, _, _ in stacks)
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    native: Counter[str] = Counter()
    gc_samples = 0
    for frames, count, in_gc, native_leaf in stacks:
        if in_gc:
            gc_samples += count
            self_time[GC] += count
            components[GC] += count
        else:
            self_time[frames[-1]] += count
            components[_component(_frame_parts(frames[-1])[1])] += count
            if native_leaf:
                native[native_leaf] += count
        for frame in set(frames):
            inclusive[frame] += count

    def inclusive_of(name: str, file_suffix: str) -> int | None:
        found = [c for f, c in inclusive.items()
                 if _frame_parts(f)[1].endswith(file_suffix)
                 and (_frame_parts(f)[0] == name or _frame_parts(f)[0].endswith("." + name))]
        return sum(found) if found else None

    pipeline = [(label, depth, inclusive_of(name, suffix)) for name, suffix, label, depth in PIPELINE_FRAMES]
    pipeline = [(label, depth, samples) for label, depth, samples in pipeline if samples is not None]
    # Our code, without the entry points every sample passes through (cli, the serve loop).
    own = [(f, c) for f, c in inclusive.most_common()
           if _frame_parts(f)[1].startswith(OWN_CODE) and c < 0.99 * max(1, total)]
    return {"total": total, "self": self_time.most_common(25), "inclusive": inclusive.most_common(60),
            "components": components.most_common(), "pipeline": pipeline, "own": own[:25],
            "gc": gc_samples, "native": native.most_common(12),
            "parts": {label: inclusive_of(name, suffix) for name, suffix, label in LIMITER_CACHE_FRAMES}}


def py_spy_binary() -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise RuntimeError("py-spy not found: pip install py-spy (into the venv)")
    return py_spy


def profile_run(target: Target, pid: int, seconds: int, output: list[str]) -> Run:
    """One 64-connection wrk run with py-spy recording the process (blocking mode: full stacks)."""
    # --gil: only the thread holding the GIL, i.e. running Python or C code of the interpreter. A thread
    # inside send() has released it; counting it would count the time it waits for a CPU after waking
    # wrk or the upstream (wake-up preemption on a small machine) as if it were work. Kernel time is
    # measured separately (stime).
    command = [py_spy_binary(), "record", "--pid", str(pid), "-d", str(seconds), "-r", str(PROFILE_RATE), "--gil",
               *output]
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(0.5)  # attached before the load starts
        run = run_wrk(target, 64, seconds + 1, "profile", quiet=True)
        out, _ = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.terminate()
            spy.wait(timeout=10)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed ({spy.returncode}):\n{out.decode(errors='replace')}")
    return run


@dataclass
class Profile:
    summary: dict[str, Any]
    run: Run  # the wrk run during the raw recording

    def us_per_request(self, samples: int) -> float:
        """Samples (taken while holding the GIL) → user-space CPU µs per request, from the process's
        measured user CPU time in that run."""
        total = max(1, self.summary["total"])
        return samples / total * self.user_us_per_request

    @property
    def user_us_per_request(self) -> float:
        return (self.run.server_cpu - self.run.server_sys) / max(1, self.run.requests) * 1e6

    @property
    def kernel_us_per_request(self) -> float:
        return self.run.server_sys / max(1, self.run.requests) * 1e6


def profile_targets(gateway: Target, gateway_pid: int, bare: Target, bare_pid: int, duration: float,
                    svg: Path, tmp: Path) -> tuple[Profile, Profile]:
    seconds = max(2, int(duration))
    profile_run(gateway, gateway_pid, seconds, ["-o", str(svg)])
    raw = ["--native", "--format", "raw", "--function", "-o"]
    gateway_run = profile_run(gateway, gateway_pid, seconds, [*raw, str(tmp / "gateway.raw")])
    bare_run = profile_run(bare, bare_pid, seconds, [*raw, str(tmp / "bare.raw")])
    return (Profile(summarize_profile(tmp / "gateway.raw"), gateway_run),
            Profile(summarize_profile(tmp / "bare.raw"), bare_run))


def profile_gateway_raw(gateway: Target, gateway_pid: int, duration: float, tmp: Path, name: str) -> Profile:
    run = profile_run(gateway, gateway_pid, max(2, int(duration)),
                      ["--native", "--format", "raw", "--function", "-o", str(tmp / name)])
    return Profile(summarize_profile(tmp / name), run)


# ----------------------------------------------------------------------------- the run

@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Processes = field(default_factory=Processes)
    runs: list[Run] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None
    bare_profile: Profile | None = None
    profile_10k: Profile | None = None
    redis_profiles: dict[str, Profile] = field(default_factory=dict)  # gateway-redis, -limited, -cached
    local_pg: Any = None
    admin_dsn: str = ""
    bench_dbs: list[str] = field(default_factory=list)  # databases made by this run, dropped at the end
    redis: BenchRedis | None = None

    # -- services

    def start_upstream(self) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        proc = start_nginx(self.procs, "nginx upstream", self.tmp / "nginx-upstream",
                           NGINX_UPSTREAM.format(port=port, json=UPSTREAM_BODY))
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", proc, self.tmp / "nginx-upstream" / "error.log",
                  ok=lambda s, b: s == 200 and b == UPSTREAM_BODY.encode())
        return port, proc

    def start_nginx_proxy(self, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        proc = start_nginx(self.procs, "nginx proxy", self.tmp / "nginx-proxy",
                           NGINX_PROXY.format(port=port, upstream_port=upstream_port))
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", proc, self.tmp / "nginx-proxy" / "error.log",
                  ok=lambda s, b: s == 200 and b == UPSTREAM_BODY.encode())
        return port, proc

    def start_bare(self, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        log_path = self.tmp / "bare_proxy.log"
        proc = self.procs.start("bare aiohttp proxy", [sys.executable, str(BENCH_DIR / "bare_proxy.py"),
                                                      "--port", str(port),
                                                      "--upstream", f"http://127.0.0.1:{upstream_port}"],
                                log_path, cwd=self.tmp)
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", proc, log_path,
                  ok=lambda s, b: s == 200 and b == UPSTREAM_BODY.encode())
        return port, proc

    def start_nginx_cache(self, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        prefix = self.tmp / "nginx-cache"
        proc = start_nginx(self.procs, "nginx proxy_cache", prefix,
                           NGINX_CACHE.format(port=port, upstream_port=upstream_port, prefix=prefix))
        url = f"http://127.0.0.1:{port}{UPSTREAM_PATH}"
        wait_http(url, proc, prefix / "error.log", ok=lambda s, b: s == 200 and b == UPSTREAM_BODY.encode())
        status, headers, body = http_get(url)
        if status != 200 or body != UPSTREAM_BODY.encode() or headers.get("x-cache-status") != "HIT":
            raise RuntimeError(f"nginx proxy_cache does not answer from its cache: {status} "
                               f"X-Cache-Status {headers.get('x-cache-status')!r} {body[:200]!r}")
        return port, proc

    def database(self, suffix: str = "") -> str:
        """A fresh, migrated database (on DATABASE_URL's server or a throwaway cluster)."""
        name = f"gateway_bench_{os.getpid()}{suffix}"
        if self.admin_dsn:
            asyncio.run(create_database(self.admin_dsn, name))
            self.bench_dbs.append(name)
            dsn = with_database(self.admin_dsn, name)
            asyncio.run(migrate(dsn))
            return dsn
        admin = database_url_answers()
        if admin:
            log(f"using DATABASE_URL's server, fresh database {name}")
        else:
            log("DATABASE_URL is unset or does not answer: starting a throwaway PostgreSQL")
            bin_dir = devservices.postgres_bin_dir()
            if bin_dir is None:
                raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql) and no DATABASE_URL")
            pg_dir = self.tmp / "postgres"
            # Like start_postgres(), but kept for cleanup before it starts, so a failed start is stopped too.
            self.local_pg = devservices.LocalPostgres(pg_dir, devservices.free_port(), bin_dir,
                                                      devservices._unprivileged_user())
            self.local_pg.start()
            admin = self.local_pg.dsn
        self.admin_dsn = admin
        asyncio.run(create_database(admin, name))
        self.bench_dbs.append(name)
        dsn = with_database(admin, name)
        asyncio.run(migrate(dsn))
        return dsn

    def start_gateway(self, dsn: str, secret: str, name: str = "gateway",
                      extra_env: dict[str, str] | None = None) -> tuple[int, subprocess.Popen[bytes], int]:
        """`gateway serve`, one process; returns (port, process, metrics port)."""
        port, metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GATEWAY_") and k not in ("REDIS_URL", "DATABASE_URL")}
        env.update({
            "DATABASE_URL": dsn,
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_ENCRYPTION_KEYS": generate_key_ring_entry("bench1"),
            "GATEWAY_ASSERTION_KEY": assertion_key_pem(),
            "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(metrics_port),
            "GATEWAY_WORKERS": "1",
            "GATEWAY_DRAIN_SECONDS": "5",  # a quick stop at the end; nothing is in flight then
        })
        env.update(extra_env or {})
        gateway_cli = Path(sys.executable).parent / "gateway"
        command = ([str(gateway_cli), "serve"] if gateway_cli.exists()
                   else [sys.executable, "-m", "gateway.cli", "serve"])
        log_path = self.tmp / f"{name}.log"
        # cwd: an empty directory, so no stray .env fills in settings.
        proc = self.procs.start(name, command, log_path, cwd=self.tmp / "gateway-cwd", env=env)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log_path, within=60, ok=lambda s, b: s == 200)
        return port, proc, metrics_port

    # -- phases

    def rounds(self, targets: list[Target], connections: list[int], rounds: int, phase: str) -> None:
        for number in range(rounds):
            # Rotate the order each round so no target always runs first (or right after another).
            order = targets[number % len(targets):] + targets[:number % len(targets)]
            log(f"{phase} round {number + 1}/{rounds}")
            for conns in connections:
                for target in order:
                    run = run_wrk(target, conns, self.args.duration, phase)
                    run.round = number
                    self.runs.append(run)

    def main(self) -> None:
        args = self.args
        wrk_available()
        (self.tmp / "gateway-cwd").mkdir()
        os.chmod(self.tmp, 0o755)  # PostgreSQL, running as its own user, must reach its data dir

        upstream_port, upstream_proc = self.start_upstream()
        upstream = f"http://127.0.0.1:{upstream_port}"
        log(f"upstream nginx on {upstream_port} (pid {upstream_proc.pid})")
        proxy_port, proxy_proc = self.start_nginx_proxy(upstream_port)
        log(f"nginx proxy on {proxy_port} (pid {proxy_proc.pid})")
        bare_port, bare_proc = self.start_bare(upstream_port)
        log(f"bare aiohttp proxy on {bare_port} (pid {bare_proc.pid})")

        dsn = self.database()
        secret = os.urandom(24).hex()
        seed = asyncio.run(seed_host_rows(dsn))
        gw_port, gw_proc, _ = self.start_gateway(dsn, secret)
        gateway = f"http://127.0.0.1:{gw_port}"
        log(f"gateway on {gw_port} (pid {gw_proc.pid})")
        asyncio.run(register_through_api(gateway, secret, seed, upstream))
        member_token = issue_token(secret, seed.member, lifetime_seconds=24 * 3600)
        plugin_path = f"/spaces/{seed.space}/plugins/{PLUGIN_SLUG}/reports/42"

        def gateway_answers(status: int, body: bytes) -> bool:
            return status == 200 and body == UPSTREAM_BODY.encode()

        request = urllib.request.Request(gateway + plugin_path, headers={"Authorization": f"Bearer {member_token}"})
        self.wait_proxied(gateway + plugin_path, member_token, "gateway")
        log(f"member call through the gateway answers 200 ({plugin_path})")

        def tree(proc: subprocess.Popen[bytes]) -> Callable[[], list[int]]:
            return lambda: [proc.pid, *children_of(proc.pid)]

        upstream_tree = tree(upstream_proc)
        scripts = self.tmp / "wrk"
        scripts.mkdir()
        plain = write_wrk_script(scripts / "plain.lua", {})
        authed = write_wrk_script(scripts / "gateway.lua", {"Authorization": f"Bearer {member_token}"})
        targets = [
            Target("upstream", "upstream (nginx, direct)", upstream + UPSTREAM_PATH, plain, upstream_tree),
            Target("nginx-proxy", "nginx reverse proxy", f"http://127.0.0.1:{proxy_port}{UPSTREAM_PATH}", plain,
                   tree(proxy_proc), upstream_tree),
            Target("bare-aiohttp", "bare aiohttp proxy (1 process)", f"http://127.0.0.1:{bare_port}{UPSTREAM_PATH}",
                   plain, tree(bare_proc), upstream_tree),
            Target("gateway", "gateway (1 process, full pipeline)", gateway + plugin_path, authed,
                   tree(gw_proc), upstream_tree),
        ]
        if not args.skip_redis:
            targets += self.redis_targets(upstream, upstream_port, secret, scripts, tree, upstream_tree)
        by_key = {t.key: t for t in targets}
        self.facts["targets"] = {t.key: t.label for t in targets}
        self.facts["gateway_pid"] = gw_proc.pid

        log("warm-up (not recorded)")
        for target in targets:
            run_wrk(target, 64, min(3, args.duration), "warmup", quiet=True)

        self.rounds(targets, args.connections, args.rounds, "main")

        if args.profile:
            log(f"profiling with py-spy at 64 connections, {max(2, int(args.duration))}s each: "
                "gateway (flame graph), gateway (raw), bare aiohttp proxy (raw)")
            # The flame graph goes next to the results; a run that writes none (--quick) keeps it in
            # the temporary directory (see --keep), so it never replaces the one RESULTS.md refers to.
            svg = Path(args.output).with_name("profile.svg") if args.output else self.tmp / "profile.svg"
            self.profile, self.bare_profile = profile_targets(
                by_key["gateway"], gw_proc.pid, by_key["bare-aiohttp"], bare_proc.pid, args.duration, svg, self.tmp)

        if args.profile and self.redis is not None:
            log("profiling the Redis-backed gateway (raw): route without limit, limited route, cached route")
            for key in REDIS_TARGETS:
                self.redis_profiles[key] = profile_gateway_raw(by_key[key], self.facts["gateway_redis_pid"],
                                                               args.duration, self.tmp, f"{key}.raw")
        if self.redis is not None:
            self.facts["redis_after_rounds"] = self.redis_facts()

        if not args.skip_10k:
            log(f"inserting {TARGET_ROUTES - 1:,} more routes straight into PostgreSQL")
            started = time.monotonic()
            total = asyncio.run(insert_extra_routes(dsn, seed, upstream))
            inserted = time.monotonic() - started
            deadline = time.monotonic() + 120
            while True:
                state = readyz(gateway)["route_table"]
                if state["routes"] >= TARGET_ROUTES:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not reload: /readyz says {state}\n"
                                       f"{tail(self.tmp / 'gateway.log')}")
                time.sleep(0.05)
            reloaded = time.monotonic() - started - inserted
            log(f"{total:,} routes in the database, {state['routes']:,} in the gateway's table "
                f"(insert {inserted:.2f}s, reload seen after {reloaded:.2f}s more)")
            self.facts["routes_10k"] = {"db": total, "table": state["routes"], "insert_s": inserted,
                                        "reload_s": reloaded}
            with urllib.request.urlopen(request, timeout=5) as response:
                assert gateway_answers(response.status, response.read()), "gateway broke after the reload"
            time.sleep(1.0)
            run_wrk(by_key["gateway"], 64, min(3, args.duration), "warmup", quiet=True)
            self.rounds([by_key["bare-aiohttp"], by_key["gateway"]], [64], args.rounds, "10k")
            self.facts["gc_probe"] = gc_probe(dsn)
            if args.profile:
                log("profiling the gateway with 10,000 routes (raw)")
                self.profile_10k = profile_gateway_raw(by_key["gateway"], gw_proc.pid, args.duration, self.tmp,
                                                       "gw10k.raw")
        self.facts["gateway_log"] = scan_gateway_log(self.tmp / "gateway.log", RUN_ENDS.get("gateway", []))
        if self.redis is not None:
            self.facts["gateway_redis_log"] = scan_gateway_log(
                self.tmp / "gateway-redis.log",
                sorted(end for key in REDIS_TARGETS for end in RUN_ENDS.get(key, [])))

    def wait_proxied(self, url: str, token: str, name: str, within: float = 10.0) -> dict[str, str]:
        """Polls until the gateway proxies `url` for the caller (its route table may still be
        reloading after the registration); returns the answer's headers."""
        deadline = time.monotonic() + within
        while True:
            status, headers, body = http_get(url, {"Authorization": f"Bearer {token}"})
            if status == 200 and body == UPSTREAM_BODY.encode():
                return headers
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} does not proxy {url}: {status} {body[:500]!r}\n"
                                   f"{tail(self.tmp / f'{name}.log')}")
            time.sleep(0.05)

    def redis_targets(self, upstream: str, upstream_port: int, secret: str, scripts: Path,
                      tree: Callable[[subprocess.Popen[bytes]], Callable[[], list[int]]],
                      upstream_tree: Callable[[], list[int]]) -> list[Target]:
        """The second gateway (REDIS_URL set, its own database so the first one's table stays at one
        route) with a route without limit, a rate-limited route and a cached route of the same plugin,
        and nginx with proxy_cache. Checks that the limiter counts in Redis and that the cache HITs."""
        args = self.args
        self.redis = BenchRedis(args.redis, args.redis_db)
        self.redis.claim()
        log(f"Redis {self.redis.display}: empty, used by the Redis-backed gateway")
        dsn = self.database("_redis")
        seed = asyncio.run(seed_host_rows(dsn))
        port, proc, metrics_port = self.start_gateway(dsn, secret, "gateway-redis", {
            "REDIS_URL": self.redis.url, "GATEWAY_REDIS_TIMEOUT": f"{args.redis_timeout:g}"})
        self.facts["gateway_redis_pid"] = proc.pid
        base = f"http://127.0.0.1:{port}"
        log(f"Redis-backed gateway on {port} (pid {proc.pid})")
        asyncio.run(register_through_api(base, secret, seed, upstream, extra_routes=(
            {"route_path": LIMITED_ROUTE, "method": "GET", "target_url": "/reports/{id}",
             "rate_limit": BENCH_RATE_LIMIT, "rate_limit_window": BENCH_RATE_WINDOW},
            {"route_path": CACHED_ROUTE, "method": "GET", "target_url": "/reports/{id}",
             "cache_enabled": True, "cache_ttl": BENCH_CACHE_TTL},
        )))
        token = issue_token(secret, seed.member, lifetime_seconds=24 * 3600)
        prefix = f"/spaces/{seed.space}/plugins/{PLUGIN_SLUG}"
        paths = {"gateway-redis": f"{prefix}/reports/42", "gateway-limited": f"{prefix}/limited/42",
                 "gateway-cached": f"{prefix}/cached/42"}
        for path in paths.values():
            self.wait_proxied(base + path, token, "gateway-redis")
        health = readyz(base)
        if health.get("redis") not in (None, "up"):
            raise RuntimeError(f"the Redis-backed gateway reports Redis {health.get('redis')!r}: {health}")

        # The limiter counts in Redis: two calls, Remaining drops by one, the window's key holds the count.
        auth = {"Authorization": f"Bearer {token}"}
        first = http_get(base + paths["gateway-limited"], auth)[1]
        second = http_get(base + paths["gateway-limited"], auth)[1]
        keys = self.redis.keys(BenchRedis.PREFIX + "rl:*")
        limiter = {"limit": second.get("ratelimit-limit"), "policy": second.get("ratelimit-policy"),
                   "remaining": [first.get("ratelimit-remaining"), second.get("ratelimit-remaining")],
                   "redis_keys": len(keys), "redis_count": self.redis.counter_total()}
        if (limiter["limit"] != str(BENCH_RATE_LIMIT) or len(keys) != 1
                or int(first.get("ratelimit-remaining", -1)) - int(second.get("ratelimit-remaining", -1)) != 1
                or BENCH_RATE_LIMIT - int(second["ratelimit-remaining"]) != limiter["redis_count"]):
            raise RuntimeError(f"the rate limiter does not count in Redis as expected: {limiter}")
        log(f"limited route: RateLimit-Limit {limiter['limit']}, Remaining {limiter['remaining'][0]} → "
            f"{limiter['remaining'][1]}, Redis key count {limiter['redis_count']}")
        # The cache: the polling above stored the answer (MISS); the same caller and request now HIT.
        deadline = time.monotonic() + 2  # the MISS stores its answer right after streaming it
        while (sample := http_get(base + paths["gateway-cached"], auth)[1]).get("x-cache-status") != "HIT":
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cache = {"status": sample.get("x-cache-status"), "age": sample.get("age"),
                 "redis_entries": len(self.redis.keys(BenchRedis.PREFIX + "c:*"))}
        if cache["status"] != "HIT":
            raise RuntimeError(f"the gateway's cached route does not HIT: {sample}")
        log(f"cached route: X-Cache-Status {cache['status']} (Age {cache['age']}), "
            f"{cache['redis_entries']} entry in Redis")
        self.facts["redis_checks"] = {"limiter": limiter, "cache": cache, "readyz_redis": health.get("redis"),
                                      "url": self.redis.display, "routes": seed.routes,
                                      "server": {k: self.redis.info().get(k) for k in ("redis_version",
                                                                                        "process_id")}}

        cache_port, cache_proc = self.start_nginx_cache(upstream_port)
        log(f"nginx proxy_cache on {cache_port} (pid {cache_proc.pid}), answering HIT")
        script = write_wrk_script(scripts / "gateway-redis.lua", auth)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.facts["redis_metrics_url"] = metrics_url

        def counters() -> dict[str, float]:
            return scrape_metrics(metrics_url, GATEWAY_COUNTERS)

        redis_cpu = self.redis.cpu_seconds
        return [
            Target("gateway-redis", REDIS_TARGETS["gateway-redis"], base + paths["gateway-redis"], script,
                   tree(proc), upstream_tree, redis_cpu, counters),
            Target("gateway-limited", REDIS_TARGETS["gateway-limited"], base + paths["gateway-limited"], script,
                   tree(proc), upstream_tree, redis_cpu, counters),
            Target("gateway-cached", REDIS_TARGETS["gateway-cached"], base + paths["gateway-cached"], script,
                   tree(proc), upstream_tree, redis_cpu, counters),
            Target("nginx-cache", "nginx reverse proxy with proxy_cache (HIT)",
                   f"http://127.0.0.1:{cache_port}{UPSTREAM_PATH}", scripts / "plain.lua", tree(cache_proc),
                   upstream_tree),
        ]

    def redis_facts(self) -> dict[str, Any]:
        """After the rounds: what Redis counted for the limited route, and what the gateway answered."""
        assert self.redis is not None
        samples = scrape_metrics(self.facts["redis_metrics_url"], GATEWAY_COUNTERS)
        route_id = self.facts["redis_checks"]["routes"].get(LIMITED_ROUTE, "?")
        return {"redis_count": self.redis.counter_total(),
                "answered": sum_metric(samples, "gateway_requests_total", f'route="{route_id}"'),
                "fallbacks": sum_metric(samples, "gateway_rate_limit_fallback_total"),
                "redis_errors": sum_metric(samples, "gateway_dependency_errors_total", 'dependency="redis"'),
                "cache": {status: sum_metric(samples, "gateway_cache_total", f'status="{status}"')
                          for status in ("hit", "miss", "bypass")}}

    def cleanup(self) -> None:
        if self.args.keep:
            keep = Path(self.args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for artifact in [*self.tmp.glob("*.raw"), self.tmp / "gateway.log", self.tmp / "gateway-redis.log",
                             self.tmp / "profile.svg"]:
                if artifact.exists():
                    shutil.copy(artifact, keep / artifact.name)
        self.procs.stop_all()
        if self.redis is not None:  # after the gateway stopped: nothing writes there any more
            try:
                deleted = self.redis.cleanup()
                if self.redis.used:
                    log(f"deleted this run's {deleted} keys (pgw:*) from Redis {self.redis.display}")
            except Exception as exc:  # noqa: BLE001
                log(f"could not delete this run's keys from Redis {self.redis.display}: {exc}")
            finally:
                self.redis.close()
        if self.local_pg is None:
            for name in self.bench_dbs:
                try:
                    asyncio.run(drop_database(self.admin_dsn, name))
                except Exception as exc:  # noqa: BLE001
                    log(f"could not drop database {name}: {exc}")
        if self.local_pg is not None:
            self.local_pg.stop()
            log("throwaway PostgreSQL stopped")


# ----------------------------------------------------------------------------- report

def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary_rows(runs: list[Run], phase: str) -> dict[tuple[str, int], dict[str, float]]:
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        if run.phase == phase:
            groups.setdefault((run.target, run.connections), []).append(run)
    rows = {}
    for key, group in groups.items():
        rows[key] = {
            "rps": median([r.rps for r in group]), "rps_min": min(r.rps for r in group),
            "rps_max": max(r.rps for r in group), "p50": median([r.p50_ms for r in group]),
            "p99": median([r.p99_ms for r in group]), "cpu": median([r.server_cpu for r in group]),
            "cpu_us_per_req": median([r.server_cpu / max(1, r.requests) * 1e6 for r in group]),
            "sys_share": median([r.server_sys_share for r in group]),
            "upstream_cpu": median([r.upstream_cpu for r in group]),
            "other_cpu": median([r.other_cpu for r in group]),
            "errors": sum(r.errors for r in group), "non_2xx": sum(r.non_2xx for r in group),
            "n": len(group),
            "requests": sum(r.requests for r in group),
            "redis_cpu": median([r.redis_cpu for r in group]),
            "redis_us_per_req": median([r.redis_cpu / max(1, r.requests) * 1e6 for r in group]),
            "fallbacks": sum(sum_metric(r.counters, "gateway_rate_limit_fallback_total") for r in group),
            "redis_errors": sum(sum_metric(r.counters, "gateway_dependency_errors_total", 'dependency="redis"')
                                for r in group),
            "limited": sum(sum_metric(r.counters, "gateway_rate_limited_total") for r in group),
            "hit": sum(sum_metric(r.counters, "gateway_cache_total", 'status="hit"') for r in group),
            "miss": sum(sum_metric(r.counters, "gateway_cache_total", 'status="miss"') for r in group),
            "bypass": sum(sum_metric(r.counters, "gateway_cache_total", 'status="bypass"') for r in group),
        }
    return rows


def paired_ratios(runs: list[Run], phase: str, a: str, b: str, connections: int) -> list[float]:
    """req/s of `a` over `b` in each round (the two ran in the same round, minutes apart at most)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run.phase == phase and run.connections == connections and run.target in (a, b):
            by_round.setdefault(run.round, {})[run.target] = run.rps
    return [pair[a] / pair[b] for pair in by_round.values() if a in pair and b in pair and pair[b]]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def machine_facts() -> dict[str, str]:
    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = "\n".join(line for line in subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "auth", "routing", "db"],
        capture_output=True, text=True).stdout.splitlines() if line.strip())
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": version(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": version(["wrk", "--version"]).split(" Copyright")[0],
        "commit": commit + (" plus uncommitted changes to " + ", ".join(
            line[3:] for line in dirty.splitlines()) if dirty else ""),
        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def render(bench: Bench, machine: dict[str, str]) -> str:
    args = bench.args
    rows = summary_rows(bench.runs, "main")
    labels = bench.facts.get("targets", {})
    out: list[str] = []
    w = out.append
    w("# Benchmark results\n")
    w(f"`python bench/run.py --duration {args.duration:g} --rounds {args.rounds}"
      f"{' --profile' if args.profile else ''}{' --quick' if args.quick else ''}` — "
      f"{machine['date']}, commit {machine['commit']}.\n")
    w(f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), Linux {machine['kernel']}, Python {machine['python']}, "
      f"aiohttp {machine['aiohttp']}, nginx {machine['nginx']}, {machine['wrk']}. "
      f"Load average when the run started: {machine['loadavg']}.\n")
    w(f"wrk with {WRK_THREADS} threads for {args.duration:g}s per run; {args.rounds} rounds, targets round-robin "
      "(order rotated each round); every figure is the median over the rounds. Everything (wrk, upstream, "
      "proxy, PostgreSQL) shares the same machine. Upstream answer: "
      f"{len(UPSTREAM_BODY)}-byte JSON from nginx `return 200`.\n")
    w("## Throughput and latency\n")
    w("| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | server CPU s/run | "
      "kernel share | CPU µs/req | upstream CPU s/run | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in [k for k in labels if k in MAIN_TARGETS]:
        for conns in args.connections:
            row = rows.get((key, conns))
            if row is None:
                continue
            errors = errors_cell(row)
            upstream_cpu = f"{row['upstream_cpu']:.2f}" if key != "upstream" else "—"
            w(f"| {labels[key]} | {conns} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} | "
              f"{row['p50']:.2f} | {row['p99']:.2f} | {row['cpu']:.2f} | {row['sys_share']:.0%} | "
              f"{row['cpu_us_per_req']:.0f} | "
              f"{upstream_cpu} | {errors} |")
    w("")
    w("*server CPU* is utime+stime of the target's own server process(es) during the run "
      "(nginx: master + worker; the upstream nginx for the proxied targets is the *upstream* column), "
      f"from /proc/<pid>/stat. One process can use at most {args.duration:g} CPU-s per run.\n")
    other = [r.other_cpu for r in bench.runs if r.phase == "main"]
    if other:
        available = (os.cpu_count() or 1) * args.duration
        w(f"CPU used by processes outside the benchmark during the runs (machine busy − servers − upstream − wrk): "
          f"median {median(other):.2f}s, max {max(other):.2f}s per {args.duration:g}s run (of "
          f"{available:g} available).\n")
        if median(other) > 0.1 * available:
            w(f"**This run was noisy**: other processes took {median(other) / available:.0%} of the machine in the "
              "median run. Absolute req/s and latencies are depressed; ratios between targets (alternating "
              "rounds) and CPU µs/req hold up better.\n")

    w("## Ratios\n")
    w("| conns | gateway / bare aiohttp (req/s) | gateway / nginx proxy (req/s) | bare aiohttp / nginx proxy | "
      "gateway CPU µs/req − bare |")
    w("|---:|---:|---:|---:|---:|")
    for conns in args.connections:
        gw, bare = rows.get(("gateway", conns)), rows.get(("bare-aiohttp", conns))
        ngx = rows.get(("nginx-proxy", conns))
        if gw and bare and ngx:
            w(f"| {conns} | {ratio(gw['rps'], bare['rps']):.1%} | {ratio(gw['rps'], ngx['rps']):.1%} | "
              f"{ratio(bare['rps'], ngx['rps']):.1%} | {gw['cpu_us_per_req'] - bare['cpu_us_per_req']:+.0f} µs |")
    w("")

    goals: list[str] = []
    later_goals: list[str] = []  # the limiter's and the cache's, listed after the proxy's own
    if "gateway-limited" in labels:
        out.extend(render_limiter(bench, rows, later_goals))
    if "gateway-cached" in labels:
        out.extend(render_cache(bench, rows, later_goals))
    gw64, bare64, gw8 = rows.get(("gateway", 64)), rows.get(("bare-aiohttp", 64)), rows.get(("gateway", 8))
    if gw64 and bare64:
        r = ratio(gw64["rps"], bare64["rps"])
        goals.append(f"| gateway ≥ 75 % of bare aiohttp req/s (64 conns, 1 process each) | {r:.1%} | "
                     f"{'met' if r >= GOAL_RATIO_BARE else 'NOT met'} |")
    gw8_bare = rows.get(("bare-aiohttp", 8))
    if gw8 and gw8_bare:
        r = ratio(gw8["rps"], gw8_bare["rps"])
        goals.append(f"| gateway ≥ 75 % of bare aiohttp req/s (8 conns) | {r:.1%} | "
                     f"{'met' if r >= GOAL_RATIO_BARE else 'NOT met'} |")
    if gw8:
        floor = f" (bare aiohttp: {gw8_bare['p99']:.2f} ms)" if gw8_bare else ""
        goals.append(f"| gateway p99 ≤ 3 ms at 8 conns | {gw8['p99']:.2f} ms{floor} | "
                     f"{'met' if gw8['p99'] <= GOAL_P99_MS_AT_8 else 'NOT met'} |")

    ten = summary_rows(bench.runs, "10k")
    if ten and gw64 and bare64:
        g10, b10 = ten.get(("gateway", 64)), ten.get(("bare-aiohttp", 64))
        facts = bench.facts.get("routes_10k", {})
        raw_ratio = ratio(g10["rps"], gw64["rps"])
        normalized = ratio(ratio(g10["rps"], b10["rps"]), ratio(gw64["rps"], bare64["rps"]))
        w("## 1 route vs 10,000 routes (64 connections)\n")
        w(f"{facts.get('table', '?'):,} routes in the gateway's table after inserting {TARGET_ROUTES - 1:,} rows "
          f"(99 other services × 100 routes, 99 more routes of the benchmarked service beside and below its "
          f"template); the insert took {facts.get('insert_s', 0):.2f}s and the gateway served the new table "
          f"{facts.get('reload_s', 0):.2f}s after the commit (LISTEN/NOTIFY → debounced reload, built in a thread). "
          "The bare proxy ran again, alternating with the gateway, to show the machine's drift between the phases.\n")
        w("| | 1 route | 10,000 routes | ratio |")
        w("|---|---:|---:|---:|")
        w(f"| gateway req/s | {gw64['rps']:,.0f} | {g10['rps']:,.0f} | {raw_ratio:.1%} |")
        w(f"| gateway p50 ms | {gw64['p50']:.2f} | {g10['p50']:.2f} | {ratio(g10['p50'], gw64['p50']):.1%} |")
        w(f"| gateway p99 ms | {gw64['p99']:.2f} | {g10['p99']:.2f} | {ratio(g10['p99'], gw64['p99']):.1%} |")
        w(f"| gateway CPU µs/req | {gw64['cpu_us_per_req']:.0f} | {g10['cpu_us_per_req']:.0f} | "
          f"{ratio(g10['cpu_us_per_req'], gw64['cpu_us_per_req']):.1%} |")
        noise_main = median([r.other_cpu for r in bench.runs if r.phase == "main" and r.connections == 64])
        w(f"| other processes' CPU s/run (noise) | {noise_main:.2f} | "
          f"{median([r.other_cpu for r in bench.runs if r.phase == '10k']):.2f} | |")
        w(f"| bare aiohttp req/s (drift reference) | {bare64['rps']:,.0f} | {b10['rps']:,.0f} | "
          f"{ratio(b10['rps'], bare64['rps']):.1%} |")
        w(f"| gateway / bare aiohttp | {ratio(gw64['rps'], bare64['rps']):.1%} | {ratio(g10['rps'], b10['rps']):.1%} | "
          f"{normalized:.1%} |")
        w("")
        probe = bench.facts.get("gc_probe")
        if isinstance(probe, list) and len(probe) == 2:
            w(f"One full garbage collection (`gc.collect()`, median of 5) in a separate process holding the proxy "
              f"state built from these rows: {probe[0]['full_gc_ms']:.0f} ms with {probe[0]['routes']} route "
              f"({probe[0]['tracked']:,} tracked objects) vs {probe[1]['full_gc_ms']:.0f} ms with "
              f"{probe[1]['routes']:,} routes ({probe[1]['tracked']:,} objects). Every request that is in flight "
              "while the gateway's event loop runs a full collection waits for it.\n")
        elif probe:
            w(f"Garbage-collection probe: {probe}.\n")
        cost = 1 - normalized
        goals.append(f"| 10,000 routes cost < 5 % (req/s, drift-normalized by the bare proxy) | {cost:+.1%} "
                     f"(raw {1 - raw_ratio:+.1%}) | {'met' if cost < GOAL_10K_COST else 'NOT met'} |")

    goals += later_goals
    if goals:
        w("## Goals\n")
        w("| goal | measured | verdict |")
        w("|---|---:|---|")
        out.extend(goals)
        w("")

    if bench.profile is not None and bench.bare_profile is not None:
        out.extend(render_profile(bench.profile, bench.bare_profile, bench.profile_10k))
    if bench.redis_profiles:
        out.extend(render_redis_profiles(bench.redis_profiles, bench.bare_profile))
    w("## Gateway log\n")
    out.extend(log_findings(bench.facts.get("gateway_log")))
    if "gateway_redis_log" in bench.facts:
        w("## Redis-backed gateway log\n")
        out.extend(log_findings(bench.facts.get("gateway_redis_log")))
    return "\n".join(out)


def errors_cell(row: dict[str, float]) -> str:
    return f"{row['errors']} sock / {row['non_2xx']} non-2xx" if row["errors"] or row["non_2xx"] else "0"


def spread(values: list[float]) -> str:
    return f"{min(values):.1%}–{max(values):.1%}" if values else "—"


def render_limiter(bench: Bench, rows: dict[tuple[str, int], dict[str, float]], goals: list[str]) -> list[str]:
    args, facts = bench.args, bench.facts
    checks = facts.get("redis_checks", {})
    out: list[str] = []
    w = out.append
    w("## Rate limiter cost\n")
    timeout_note = (" (the gateway's default)." if args.redis_timeout == 0.05 else
                    " instead of the default 0.05 s: a saturated event loop reads Redis's answers late, and "
                    "past the timeout a decision goes to the fallback (counted in process memory), which is not "
                    "what is measured here (`--redis-timeout 0.05` measures the default).")
    w(f"A second gateway process (`gateway serve`, one worker) with `REDIS_URL={checks.get('url', '?')}`: the "
      "realistic multi-node setup, where the limiter counts in Redis. "
      f"`GATEWAY_RATE_LIMIT_FAILURE` is the default (`local`); `GATEWAY_REDIS_TIMEOUT={args.redis_timeout:g}` "
      f"s{timeout_note} It has its own database (so the first gateway's table "
      "keeps its one route) with the same plugin, caller and upstream, and two of the routes compared here: "
      f"`/reports/{{id}}` without a limit and `{LIMITED_ROUTE}` with `rate_limit` {BENCH_RATE_LIMIT:,} per "
      f"`rate_limit_window` {BENCH_RATE_WINDOW} s, never reached. Each request of the limited route runs the "
      "limiter's Lua script in Redis (EVALSHA; the checks of one event-loop turn go as one pipeline) and "
      "carries the RateLimit headers. The gateway without Redis (the main table) is shown for context.\n")
    w("| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | gateway CPU µs/req | "
      "Redis CPU µs/req | decisions without Redis | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    labels = facts.get("targets", {})
    for key in ("gateway", "gateway-redis", "gateway-limited"):
        for conns in args.connections:
            row = rows.get((key, conns))
            if row is None:
                continue
            redis_cell = f"{row['redis_us_per_req']:.1f}" if key != "gateway" else "—"
            fallback_cell = f"{row['fallbacks']:,.0f}" if key == "gateway-limited" else "—"
            w(f"| {labels[key]} | {conns} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} | "
              f"{row['p50']:.2f} | {row['p99']:.2f} | {row['cpu_us_per_req']:.0f} | {redis_cell} | "
              f"{fallback_cell} | {errors_cell(row)} |")
    w("")
    w("*Redis CPU* is the Redis server's own CPU time (INFO cpu) during the run, per request served: the "
      "limiter's work there. *decisions without Redis*: `gateway_rate_limit_fallback_total` during the "
      "measured runs (Redis slower than the timeout or failing; such a request was counted in process "
      "memory instead); anything but 0 means some requests were not limited through Redis.\n")
    w("| conns | limited / unlimited (req/s) | limiter cost | per round | p50 limited / unlimited | "
      "p99 limited / unlimited | CPU µs/req limited − unlimited | gateway + Redis / gateway without Redis "
      "(unlimited route) |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conns in args.connections:
        lim, unl, plain = (rows.get((k, conns)) for k in ("gateway-limited", "gateway-redis", "gateway"))
        if not (lim and unl):
            continue
        r = ratio(lim["rps"], unl["rps"])
        per_round = paired_ratios(bench.runs, "main", "gateway-limited", "gateway-redis", conns)
        plain_cell = f"{ratio(unl['rps'], plain['rps']):.1%}" if plain else "—"
        w(f"| {conns} | {r:.1%} | {1 - r:+.1%} | {spread(per_round)} | {ratio(lim['p50'], unl['p50']):.1%} | "
          f"{ratio(lim['p99'], unl['p99']):.1%} | {lim['cpu_us_per_req'] - unl['cpu_us_per_req']:+.0f} µs "
          f"(+{lim['redis_us_per_req'] - unl['redis_us_per_req']:.0f} µs in Redis) | {plain_cell} |")
        goals.append(f"| rate limiter cost ≤ 10 % (req/s, limited / unlimited route, Redis, {conns} conns) | "
                     f"{1 - r:+.1%} | {'met' if 1 - r <= GOAL_LIMITER_COST else 'NOT met'} |")
    w("")
    w("*limiter cost* = 1 − limited / unlimited (medians over the rounds); *per round*: the same ratio within "
      "each round, min–max.\n")
    limiter, after = checks.get("limiter", {}), facts.get("redis_after_rounds", {})
    if limiter:
        remaining = limiter.get("remaining", ["?", "?"])
        w(f"Checked before the rounds: two calls to the limited route answered `RateLimit-Limit: {limiter['limit']}`, "
          f"`RateLimit-Policy: {limiter['policy']}`, `RateLimit-Remaining` {remaining[0]} then {remaining[1]}, and "
          f"Redis held {limiter['redis_keys']} window key (`pgw:rl:…`) counting {limiter['redis_count']}.")
    if after:
        w(f"After the rounds (warm-up and checks included): Redis had counted {after['redis_count']:,} requests "
          f"of the limited route, the gateway had answered {after['answered']:,.0f} on it; "
          f"{after['fallbacks']:,.0f} decisions were taken without Redis, {after['redis_errors']:,.0f} Redis "
          "calls failed.")
    w("")
    return out


def render_cache(bench: Bench, rows: dict[tuple[str, int], dict[str, float]], goals: list[str]) -> list[str]:
    args, facts = bench.args, bench.facts
    cache = facts.get("redis_checks", {}).get("cache", {})
    out: list[str] = []
    w = out.append
    w("## Cache hits\n")
    w(f"The Redis-backed gateway's route `{CACHED_ROUTE}` with `cache_enabled` and `cache_ttl` "
      f"{BENCH_CACHE_TTL} s. wrk always sends the same request with the same caller's JWT, so the cache key is "
      "constant: after the first request (a MISS, made before the rounds) every request is a HIT, served from "
      "the gateway's in-process LRU (Redis is its second level, not read on an L1 hit) without an upstream "
      "call. Against it: the bare aiohttp proxy (no cache: every request goes to the upstream) and nginx as a "
      "reverse proxy with `proxy_cache` (`proxy_cache_path` in the run's temporary directory, "
      "`proxy_cache_valid 200 1h`, one worker).")
    if cache:
        w(f"Checked before the rounds: the gateway answered `X-Cache-Status: {cache['status']}` "
          f"(`Age: {cache['age']}`, {cache['redis_entries']} entry in Redis), nginx "
          "`X-Cache-Status: HIT` (`add_header X-Cache-Status $upstream_cache_status`).")
    w("")
    w("| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | server CPU µs/req | "
      "upstream CPU s/run | cache outcome in the runs | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    labels = facts.get("targets", {})
    for key in ("bare-aiohttp", "gateway-redis", "gateway-cached", "nginx-proxy", "nginx-cache"):
        for conns in args.connections:
            row = rows.get((key, conns))
            if row is None:
                continue
            if key == "gateway-cached":
                decided = row["hit"] + row["miss"] + row["bypass"]
                outcome = (f"{row['hit']:,.0f} HIT, {row['miss']:,.0f} MISS ({ratio(row['hit'], decided):.2%} HIT)"
                           if decided else "?")
            else:
                outcome = {"nginx-cache": "HIT (checked)", "gateway-redis": "no cache",
                           "bare-aiohttp": "no cache", "nginx-proxy": "no cache"}[key]
            w(f"| {labels[key]} | {conns} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} | "
              f"{row['p50']:.2f} | {row['p99']:.2f} | {row['cpu_us_per_req']:.0f} | {row['upstream_cpu']:.2f} | "
              f"{outcome} | {errors_cell(row)} |")
    w("")
    w("*upstream CPU* near 0 for the cache targets shows that they did not call the upstream.\n")
    w("| conns | gateway HIT / bare aiohttp | gateway HIT / nginx proxy_cache | gateway HIT / gateway uncached "
      "(Redis, no limit) | nginx proxy_cache / nginx proxy | gateway HIT CPU µs/req − bare |")
    w("|---:|---:|---:|---:|---:|---:|")
    for conns in args.connections:
        hit, bare, ngc, unc, ngx = (rows.get((k, conns)) for k in
                                    ("gateway-cached", "bare-aiohttp", "nginx-cache", "gateway-redis", "nginx-proxy"))
        if not (hit and bare):
            continue
        r = ratio(hit["rps"], bare["rps"])
        per_round = paired_ratios(bench.runs, "main", "gateway-cached", "bare-aiohttp", conns)
        w(f"| {conns} | {r:.2f}× ({min(per_round, default=0):.2f}–{max(per_round, default=0):.2f}) | "
          f"{ratio(hit['rps'], ngc['rps']) if ngc else float('nan'):.1%} | "
          f"{ratio(hit['rps'], unc['rps']) if unc else float('nan'):.2f}× | "
          f"{ratio(ngc['rps'], ngx['rps']) if ngc and ngx else float('nan'):.2f}× | "
          f"{hit['cpu_us_per_req'] - bare['cpu_us_per_req']:+.0f} µs |")
        goals.append(f"| gateway cache HIT ≥ 1.5× bare aiohttp req/s ({conns} conns) | {r:.2f}× | "
                     f"{'met' if r >= GOAL_CACHE_VS_BARE else 'NOT met'} |")
    w("")
    w("Ratios of the medians over the rounds; in brackets the same ratio within each round, min–max.\n")
    return out


def render_profile(gw: Profile, bare: Profile, gw10k: Profile | None) -> list[str]:
    out: list[str] = []
    w = out.append
    prof, total = gw.summary, max(1, gw.summary["total"])
    w("## Where the gateway spends its time (py-spy, 64 connections)\n")
    w(f"`py-spy record -r {PROFILE_RATE} --gil --native --function` during a 64-connection wrk run, in "
      "blocking mode (whole stacks; it pauses the process at each sample, so throughput while profiled is "
      "lower and not part of the table). Only samples of the thread holding the GIL count: that is the "
      "user-space work of the interpreter. System calls release the GIL, so their kernel time is not in the "
      "samples; it is measured (stime) and shown as its own line. *µs/req* turns a share into CPU "
      "microseconds per request using the process's measured user CPU time in that run. Flame graph "
      "(`--gil`, Python frames only) of a separate run: `profile.svg` next to this file.\n")
    for label, p in (("gateway", gw), ("bare aiohttp proxy", bare)):
        w(f"- {label}: {p.run.rps:,.0f} req/s while sampled, {p.run.server_cpu:.2f} CPU-s in {p.run.wall:.1f}s "
          f"wall ({p.run.server_cpu / max(0.001, p.run.wall):.0%} of one core, {p.run.server_sys_share:.0%} of it in "
          f"the kernel), {p.run.server_cpu / max(1, p.run.requests) * 1e6:.0f} CPU µs/req, "
          f"{p.summary['total']:,} samples; other CPU (py-spy included) {p.run.other_cpu:.2f}s")
    w("")
    w("The request path (inclusive: the function and everything it calls):\n")
    w("| part | share | µs/req |")
    w("|---|---:|---:|")
    for label, depth, samples in prof["pipeline"]:
        w(f"| {'&nbsp;' * 4 * depth}{label} | {samples / total:.1%} | {gw.us_per_request(samples):.0f} |")
    w("")
    w("Gateway vs bare aiohttp proxy, by component (self time of the innermost Python frame, the "
      "garbage collector apart):\n")
    w("| component | bare µs/req | gateway µs/req | difference |")
    w("|---|---:|---:|---:|")
    bare_components = dict(bare.summary["components"])
    gw_components = dict(prof["components"])
    names = sorted(set(bare_components) | set(gw_components),
                   key=lambda n: -(gw.us_per_request(gw_components.get(n, 0))))
    for name in names[:16]:
        b, g = bare.us_per_request(bare_components.get(name, 0)), gw.us_per_request(gw_components.get(name, 0))
        w(f"| {name} | {b:.0f} | {g:.0f} | {g - b:+.0f} |")
    b_user, g_user = bare.user_us_per_request, gw.user_us_per_request
    b_kernel, g_kernel = bare.kernel_us_per_request, gw.kernel_us_per_request
    w(f"| **user space (measured utime)** | **{b_user:.0f}** | **{g_user:.0f}** | **{g_user - b_user:+.0f}** |")
    w(f"| kernel (measured stime: socket system calls) | {b_kernel:.0f} | {g_kernel:.0f} | {g_kernel - b_kernel:+.0f} |")
    w(f"| **total CPU** | **{b_user + b_kernel:.0f}** | **{g_user + g_kernel:.0f}** | "
      f"**{g_user + g_kernel - b_user - b_kernel:+.0f}** |")
    w("")
    w("The gateway's own functions (gateway/, auth/, routing/, db/), inclusive:\n")
    w("| share | µs/req | function |")
    w("|---:|---:|---|")
    for frame, samples in prof["own"][:18]:
        w(f"| {samples / total:.1%} | {gw.us_per_request(samples):.1f} | `{frame}` |")
    w("")
    w("Heaviest frames by self time, gateway:\n")
    w("| self | µs/req | function |")
    w("|---:|---:|---|")
    for frame, samples in prof["self"][:20]:
        w(f"| {samples / total:.1%} | {gw.us_per_request(samples):.1f} | `{frame}` |")
    w("")
    if prof["native"]:
        w("Innermost native (C) frame, where the sample was in C code (outside the garbage collector), "
          "gateway:\n")
        w("| share | µs/req | native frame |")
        w("|---:|---:|---|")
        for frame, samples in prof["native"][:10]:
            w(f"| {samples / total:.1%} | {gw.us_per_request(samples):.1f} | `{frame}` |")
        w("")
    w("CPython's cyclic garbage collector (samples inside `gc_collect_main`):\n")
    w("| process | GC share of samples | GC µs/req | req/s while sampled | CPU µs/req |")
    w("|---|---:|---:|---:|---:|")
    for label, p in (("bare aiohttp proxy", bare), ("gateway, 1 route", gw), ("gateway, 10,000 routes", gw10k)):
        if p is None:
            continue
        share = p.summary["gc"] / max(1, p.summary["total"])
        w(f"| {label} | {share:.1%} | {p.us_per_request(p.summary['gc']):.0f} | {p.run.rps:,.0f} | "
          f"{p.run.server_cpu / max(1, p.run.requests) * 1e6:.0f} |")
    w("")
    w("(The GC share is of the samples; GC µs/req uses the run's user CPU time. With more long-lived "
      "objects each full collection walks more of them: see the 10,000-routes section.)")
    w("")
    return out


def render_redis_profiles(profiles: dict[str, Profile], bare: Profile | None) -> list[str]:
    out: list[str] = []
    w = out.append
    names = {"gateway-redis": "no limit", "gateway-limited": "limited", "gateway-cached": "cache HIT"}
    shown = [(names[k], profiles[k]) for k in names if k in profiles]
    w("## Where the limiter and the cache hit spend their time (py-spy, 64 connections)\n")
    w("The Redis-backed gateway, recorded as above (`--gil --native --function`, blocking mode) during one "
      "64-connection run on each route. *µs/req* as above: share of the samples × the process's measured user "
      "CPU per request. The rate limiter's pipeline to Redis runs as its own task (`_IncrBatcher._send`), "
      "outside the request's stack.\n")
    for label, p in shown:
        w(f"- {label}: {p.run.rps:,.0f} req/s while sampled, {p.run.server_cpu / max(1, p.run.requests) * 1e6:.0f} "
          f"CPU µs/req ({p.run.server_sys_share:.0%} kernel), {p.summary['total']:,} samples, Redis "
          f"{p.run.redis_cpu / max(1, p.run.requests) * 1e6:.0f} CPU µs/req")
    w("")
    w("The parts (inclusive µs/req):\n")
    w("| part | " + " | ".join(label for label, _ in shown) + " |")
    w("|---|" + "---:|" * len(shown))
    for _name, _suffix, part in LIMITER_CACHE_FRAMES:
        cells = [p.summary["parts"].get(part) for _, p in shown]
        if not any(cells):
            continue
        w(f"| {part} | " + " | ".join(f"{p.us_per_request(c):.0f}" if c else "—"
                                      for (_, p), c in zip(shown, cells, strict=True)) + " |")
    w("")
    w("By component (self time of the innermost Python frame, µs/req):\n")
    columns = [*shown, *([("bare aiohttp", bare)] if bare is not None else [])]
    w("| component | " + " | ".join(label for label, _ in columns) + " |")
    w("|---|" + "---:|" * len(columns))
    comps = [dict(p.summary["components"]) for _, p in columns]
    lead = dict(profiles["gateway-limited"].summary["components"]) if "gateway-limited" in profiles else comps[0]
    every = sorted(set().union(*comps), key=lambda n: -lead.get(n, 0))
    for name in every[:16]:
        w(f"| {name} | " + " | ".join(f"{p.us_per_request(c.get(name, 0)):.0f}"
                                      for (_, p), c in zip(columns, comps, strict=True)) + " |")
    w("| **user space (measured utime)** | " + " | ".join(f"**{p.user_us_per_request:.0f}**" for _, p in columns)
      + " |")
    w("| kernel (measured stime) | " + " | ".join(f"{p.kernel_us_per_request:.0f}" for _, p in columns) + " |")
    w("| **total CPU** | " + " | ".join(f"**{p.user_us_per_request + p.kernel_us_per_request:.0f}**"
                                       for _, p in columns) + " |")
    w("")
    for key, title in (("gateway-limited", "limited route"), ("gateway-cached", "cache HIT")):
        p = profiles.get(key)
        if p is None:
            continue
        w(f"Heaviest frames by self time, {title}:\n")
        w("| self | µs/req | function |")
        w("|---:|---:|---|")
        total = max(1, p.summary["total"])
        for frame, samples in p.summary["self"][:12]:
            w(f"| {samples / total:.1%} | {p.us_per_request(samples):.1f} | `{frame}` |")
        w("")
    return out


def scan_gateway_log(path: Path, run_ends: list[float]) -> dict[str, Any]:
    """Read the gateway's log line by line (it may be large: one access-log line per request).
    Returns the WARNING/ERROR messages with their counts, how many of each were logged within
    a second of the end of a wrk run against the gateway (wrk then drops its connections), and
    the statuses the access log recorded. Knows JSON lines (gateway.logs) and plain text."""
    problems: dict[str, list[int]] = {}
    access: Counter[str] = Counter()
    lines = 0
    with open(path, errors="replace") as log_file:
        for line in log_file:
            lines += 1
            level, logger, message, stamp = "", "", line.strip(), 0.0
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    level, logger = str(record.get("level", "")), str(record.get("logger", ""))
                    message = str(record.get("msg", ""))
                    try:
                        stamp = datetime.fromisoformat(str(record.get("ts", "")).replace("Z", "+00:00")).timestamp()
                    except ValueError:
                        pass
                    if logger == "gateway.access":
                        access[str(record.get("status", "?"))] += 1
            else:
                parts = line.split(" ", 4)
                if len(parts) == 5 and parts[2] in ("INFO", "WARNING", "ERROR", "CRITICAL", "DEBUG"):
                    level, logger, message = parts[2], parts[3], parts[4].strip()
                    try:
                        stamp = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    except ValueError:
                        pass
                elif "Traceback" in line or "Error" in line:
                    level = "ERROR"
            if level not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            key = f"{level} {logger} {message}".strip()[:200]
            counts = problems.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += any(-2.0 <= stamp - end <= 1.0 for end in run_ends)
    return {"lines": lines, "problems": problems, "access": dict(access), "runs": len(run_ends)}


def log_findings(scan: dict[str, Any] | None) -> list[str]:
    if not scan:
        return ["(the gateway's log was not read)\n"]
    out = [f"{scan['lines']:,} lines in the gateway's log."]
    if scan["access"]:
        statuses = ", ".join(f"{status}: {count:,}" for status, count in sorted(scan["access"].items()))
        out[0] += f" Access-log lines by status: {statuses}."
    out.append("")
    problems = scan["problems"]
    if not problems:
        out.append("No WARNING or ERROR lines.\n")
        return out
    out += [f"{sum(c[0] for c in problems.values()):,} WARNING/ERROR lines ({scan['runs']} wrk runs against the "
            "gateway, warm-ups and profiling included):\n",
            "| count | of which within a second of a wrk run's end | line |", "|---:|---:|---|"]
    for message, (count, at_end) in sorted(problems.items(), key=lambda item: -item[1][0])[:12]:
        out.append(f"| {count:,} | {at_end:,} | `{message[:180]}` |")
    out.append("")
    return out


def print_table(bench: Bench) -> None:
    rows = summary_rows(bench.runs, "main")
    print()
    print(f"{'target':<16}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU s':>8}{'µs/req':>8}{'errors':>8}")
    for key in bench.facts.get("targets", {}):
        for conns in bench.args.connections:
            row = rows.get((key, conns))
            if row:
                print(f"{key:<16}{conns:>6}{row['rps']:>11,.0f}{row['p50']:>9.2f}{row['p99']:>9.2f}"
                      f"{row['cpu']:>8.2f}{row['cpu_us_per_req']:>8.0f}{row['errors'] + row['non_2xx']:>8}")
    print()


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against nginx and a bare aiohttp proxy.")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the targets (default 3)")
    parser.add_argument("--connections", default="8,64", help="comma-separated connection counts (default 8,64)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3s runs, 1 round; prints only (RESULTS.md untouched unless --output)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway at 64 connections (bench/profile.svg)")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the gateway's log and py-spy's raw stack files to DIR before cleaning up")
    parser.add_argument("--skip-10k", action="store_true", help="skip the 10,000-routes phase")
    parser.add_argument("--output", help="where to write the results (default bench/RESULTS.md; none with --quick)")
    parser.add_argument("--redis", default=DEFAULT_REDIS,
                        help=f"the Redis server for the limiter and cache targets (default {DEFAULT_REDIS})")
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB,
                        help=f"its database number, which must be empty (default {DEFAULT_REDIS_DB}); the run "
                             "deletes the keys it made there (pgw:*) at the end")
    parser.add_argument("--redis-timeout", type=float, default=1.0,
                        help="GATEWAY_REDIS_TIMEOUT of the Redis-backed gateway, seconds (default 1.0, so that "
                             "every limiter decision is taken in Redis; the gateway's own default is 0.05)")
    parser.add_argument("--skip-redis", action="store_true",
                        help="leave out the Redis-backed gateway (rate limiter, cache) and nginx proxy_cache")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3, 1
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.output is None and not args.quick:
        args.output = str(BENCH_DIR / "RESULTS.md")
    if args.duration <= 0 or args.rounds < 1 or not args.connections:
        parser.error("--duration and --rounds must be positive, --connections non-empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    machine = machine_facts()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bench = Bench(args, tmp)
    failed = False
    try:
        bench.main()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        failed = True
    except Exception:
        failed = True
        raise
    finally:
        # A second Ctrl-C must not leave processes or the temp dir behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            bench.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"stopped everything started, removed {tmp}")
        finally:
            signal.signal(signal.SIGINT, previous)
    if failed:
        return 130
    print_table(bench)
    report = render(bench, machine)
    if args.output:
        Path(args.output).write_text(report + "\n")
        log(f"results written to {args.output}")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
