"""Slow callers against the header deadline: N connections that send half a request line and
stop, while one client keeps calling /healthz. Side by side in one run:

- `gateway`: `gateway serve --workers 1` with GATEWAY_CLIENT_HEADER_TIMEOUT=--deadline;
- `bare-aiohttp`: `web.run_app` with aiohttp's defaults (what the gateway was before);
- `nginx`: `client_header_timeout` = --deadline, one worker (when nginx is installed).

For each: when the half-open connections were closed (min / median / max seconds after they
were opened; "open" = still open at the end), and the latency of the /healthz calls meanwhile.

    .venv/bin/python bench/slow_callers.py [--connections 500] [--deadline 2]

The gateway needs no database for this: it serves /healthz while PostgreSQL is away (its
DATABASE_URL points at a closed port). Everything started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.dev.services import free_port  # noqa: E402

HALF_A_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow"
BARE_APP = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
NGINX_CONF = """
daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log crit;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_header_timeout {deadline_ms}ms; keepalive_timeout 75s;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen 127.0.0.1:{port}; location /healthz {{ return 200 '{{"status": "ok"}}'; }} }}
}}
"""


@dataclass
class Result:
    target: str
    closed: list[float]
    still_open: int
    latencies: list[float]

    def row(self) -> str:
        closed = sorted(self.closed)
        spread = (f"{closed[0]:.2f} / {statistics.median(closed):.2f} / {closed[-1]:.2f}" if closed else "-")
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
        return (f"| {self.target} | {len(self.closed)} | {self.still_open} | {spread} | {len(lat)} | "
                f"{p50:.1f} | {p99:.1f} |")


async def _closed_after(reader: asyncio.StreamReader, started: float, limit: float) -> float | None:
    try:
        while await asyncio.wait_for(reader.read(65536), max(0.01, started + limit - time.monotonic())):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except asyncio.TimeoutError:
        return None
    return time.monotonic() - started


async def _healthz_loop(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)


async def measure(target: str, port: int, connections: int, observe: float) -> Result:
    opened_at = time.monotonic()
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    for _, writer in streams:
        writer.write(HALF_A_REQUEST)
    stop, latencies = asyncio.Event(), []
    calls = asyncio.create_task(_healthz_loop(port, stop, latencies))
    try:
        ends = await asyncio.gather(*(_closed_after(reader, opened_at, observe) for reader, _ in streams))
    finally:
        stop.set()
        await calls
        for _, writer in streams:
            writer.close()
    closed = [end for end in ends if end is not None]
    return Result(target, closed, len(ends) - len(closed), latencies)


async def wait_serving(port: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            if (await asyncio.wait_for(reader.read(12), 5)).startswith(b"HTTP/1.1 200"):
                writer.close()
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing serving on {port}")


def start_gateway(port: int, deadline: float, tmp: Path) -> subprocess.Popen[bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from db.encryption import generate_key_ring_entry

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_URL"))},
           "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",  # away on purpose
           "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": "0", "GATEWAY_JWT_SECRET": "bench-" + "x" * 32,
           "GATEWAY_ENCRYPTION_KEYS": generate_key_ring_entry("b1"), "GATEWAY_ASSERTION_KEY": pem,
           "GATEWAY_CLIENT_HEADER_TIMEOUT": str(deadline), "TMPDIR": str(tmp)}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "1"], cwd=ROOT, env=env,
                            stdout=(tmp / "gateway.log").open("wb"), stderr=subprocess.STDOUT)


def start_bare(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)], stdout=subprocess.DEVNULL,
                            stderr=(tmp / "bare.log").open("wb"))


def start_nginx(port: int, deadline: float, tmp: Path) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp, deadline_ms=int(deadline * 1000), port=port))
    return subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=(tmp / "nginx.log").open("wb"))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=2.0)
    parser.add_argument("--observe", type=float, default=8.0, help="seconds to wait for the closes")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gateway-slow-callers-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx's worker runs as nobody when started by root
        starters = [("gateway", lambda port: start_gateway(port, args.deadline, tmp)),
                    ("bare-aiohttp", lambda port: start_bare(port, tmp)),
                    ("nginx", lambda port: start_nginx(port, args.deadline, tmp))]
        for target, starter in starters:
            port = free_port()
            process = starter(port)
            if process is None:
                print(f"{target}: not installed, skipped", flush=True)
                continue
            try:
                try:
                    await wait_serving(port)
                except RuntimeError:
                    logs = " ".join(p.read_text(errors="replace")[-300:] for p in tmp.glob("*.log") if p.name != "gateway.log")
                    raise RuntimeError(f"{target} is not serving on {port} (exit {process.poll()}): {logs}") from None
                print(f"{target}: {args.connections} half-open connections ...", flush=True)
                results.append(await measure(target, port, args.connections, args.observe))
            finally:
                stop(process)
    print(f"\n{args.connections} connections sending half a request line; header deadline {args.deadline:g} s "
          f"(bare aiohttp: its defaults); observed for {args.observe:g} s\n")
    print("| target | closed | still open | closed after s (min / median / max) | /healthz calls meanwhile | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    asyncio.run(main())
