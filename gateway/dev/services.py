"""Throwaway PostgreSQL and Redis for development and tests, when none answers.

PostgreSQL refuses to run as root, so as root the server runs as the unprivileged `postgres`
user (or `nobody`) with a data directory it owns. Only processes started here are ever stopped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_answers(dsn: str, timeout: float = 3.0) -> bool:
    import asyncio

    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout)
        except Exception:  # noqa: BLE001 - any failure means "does not answer"
            return False
        await conn.close()
        return True

    return asyncio.run(probe()) if dsn else False


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    if not url:
        return False
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


def postgres_bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name))
    return Path(candidates[-1]).parent if candidates else None


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster of our own on a loopback port."""

    data_dir: Path
    port: int
    bin_dir: Path
    user: str | None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> LocalPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.data_dir, self.user)
            os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--locale=C")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -F -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass


@dataclass
class WheelPostgres:
    """PostgreSQL from the `pgserver` wheel (the `demo` extra), for machines without its binaries.
    pgserver itself runs the server as an unprivileged user when we are root."""

    server: Any

    @property
    def dsn(self) -> str:
        return str(self.server.get_uri())

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(data_dir: Path, port: int | None = None) -> LocalPostgres | WheelPostgres:
    bin_dir = postgres_bin_dir()
    if bin_dir is not None:
        return LocalPostgres(data_dir, port or free_port(), bin_dir, _unprivileged_user()).start()
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("no PostgreSQL binaries found: install PostgreSQL, pip install "
                           "'plugin-gateway[demo]' (pgserver), or set DATABASE_URL") from None
    return WheelPostgres(pgserver.get_server(str(data_dir), cleanup_mode="stop"))


@dataclass
class LocalRedis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_redis(port: int | None = None) -> LocalRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (install redis-server, or set REDIS_URL)")
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not tcp_answers("127.0.0.1", port, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return LocalRedis(process, port)
