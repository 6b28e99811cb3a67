"""What wrk loads: the nginx upstream and proxies (config files in nginx/), the bare aiohttp proxy,
`gateway serve`; and the Redis database the Redis-backed gateway uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .processes import Processes, free_port, http_get, wait_http, wait_log_line

BENCH_DIR = Path(__file__).resolve().parent.parent
NGINX_CONF = Path(__file__).resolve().parent / "nginx"
UPSTREAM_BODY = ('{"id":42,"name":"Quarterly report","status":"ok","items":[1,2,3],'
                 '"owner":"acme","generated":"2025-01-01T00:00:00Z"}')
UPSTREAM_PATH = "/v1/reports/42"


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


def upstream_answers(status: int, body: bytes) -> bool:
    return status == 200 and body == UPSTREAM_BODY.encode()


def assertion_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class Servers:
    """Starts the servers under test, each in its own directory of the run's temporary directory,
    registered with `procs` so that the run stops them."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        self.procs, self.tmp = procs, tmp

    def _nginx(self, name: str, prefix: Path, body_file: str, **values: Any) -> subprocess.Popen[bytes]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise RuntimeError("nginx not found: apt-get install -y nginx")
        prefix.mkdir(parents=True)
        body = (NGINX_CONF / body_file).read_text().format(prefix=prefix, **values)
        conf = prefix / "nginx.conf"
        conf.write_text((NGINX_CONF / "common.conf").read_text().format(prefix=prefix, body=body))
        return self.procs.start(name, [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
                                prefix / "stdout.log")

    def upstream(self) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        proc = self._nginx("nginx upstream", self.tmp / "nginx-upstream", "upstream.conf",
                           port=port, json=UPSTREAM_BODY)
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", proc, self.tmp / "nginx-upstream" / "error.log",
                  ok=upstream_answers)
        return port, proc

    def nginx_proxy(self, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        proc = self._nginx("nginx proxy", self.tmp / "nginx-proxy", "proxy.conf",
                           port=port, upstream_port=upstream_port)
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", proc, self.tmp / "nginx-proxy" / "error.log",
                  ok=upstream_answers)
        return port, proc

    def nginx_cache(self, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        prefix = self.tmp / "nginx-cache"
        proc = self._nginx("nginx proxy_cache", prefix, "cache.conf", port=port, upstream_port=upstream_port)
        url = f"http://127.0.0.1:{port}{UPSTREAM_PATH}"
        wait_http(url, proc, prefix / "error.log", ok=upstream_answers)
        status, headers, body = http_get(url)
        if status != 200 or body != UPSTREAM_BODY.encode() or headers.get("x-cache-status") != "HIT":
            raise RuntimeError(f"nginx proxy_cache does not answer from its cache: {status} "
                               f"X-Cache-Status {headers.get('x-cache-status')!r} {body[:200]!r}")
        return port, proc

    def bare_proxy(self, upstream_port: int, processes: int = 1) -> tuple[int, list[subprocess.Popen[bytes]]]:
        """bench/bare_proxy.py; with more than one process, each listens on the same port
        (SO_REUSEPORT) and the kernel spreads the connections, as over the gateway's workers."""
        port = free_port()
        started: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = []
        for number in range(processes):
            suffix = f"-{number + 1}" if processes > 1 else ""
            log_path = self.tmp / f"bare_proxy{suffix}.log"
            command = [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port),
                       "--upstream", f"http://127.0.0.1:{upstream_port}", *(["--reuse-port"] if processes > 1 else [])]
            proc = self.procs.start(f"bare aiohttp proxy{suffix}", command, log_path, cwd=self.tmp)
            # Its own line, not an answer on the port: another process may answer there already.
            wait_log_line(log_path, "bare proxy listening", proc)
            started.append(proc)
            logs.append(log_path)
        wait_http(f"http://127.0.0.1:{port}{UPSTREAM_PATH}", started[0], logs[0], ok=upstream_answers)
        return port, started

    def gateway(self, dsn: str, secret: str, encryption_keys: str, name: str = "gateway", workers: int = 1,
                extra_env: dict[str, str] | None = None) -> tuple[int, subprocess.Popen[bytes], int]:
        """`gateway serve` with `workers` processes; returns (port, process, metrics port).
        `encryption_keys`: the key ring (GATEWAY_ENCRYPTION_KEYS) the installations' credentials
        are encrypted with, shared by the nodes of one database."""
        port, metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GATEWAY_") and k not in ("REDIS_URL", "DATABASE_URL")}
        env.update({
            "DATABASE_URL": dsn,
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_ENCRYPTION_KEYS": encryption_keys,
            "GATEWAY_ASSERTION_KEY": assertion_key_pem(),
            "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "true",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(metrics_port),
            "GATEWAY_WORKERS": str(workers),
            "GATEWAY_DRAIN_SECONDS": "5",  # a quick stop at the end; nothing is in flight then
        })
        env.update(extra_env or {})
        gateway_cli = Path(sys.executable).parent / "gateway"
        command = ([str(gateway_cli), "serve"] if gateway_cli.exists()
                   else [sys.executable, "-m", "gateway.cli", "serve"])
        log_path = self.tmp / f"{name}.log"
        cwd = self.tmp / "gateway-cwd"  # an empty directory, so no stray .env fills in settings
        cwd.mkdir(exist_ok=True)
        proc = self.procs.start(name, command, log_path, cwd=cwd, env=env)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log_path, within=60, ok=lambda s, b: s == 200)
        return port, proc, metrics_port


class BenchRedis:
    """The Redis database the Redis-backed gateways use. The run refuses a database that holds
    any key when it starts (someone else's), and at the end deletes the keys the gateways made
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
