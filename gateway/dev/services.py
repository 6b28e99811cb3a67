"""Throwaway PostgreSQL and Redis for development and tests, when none answers.

PostgreSQL refuses to run as root, so as root the server runs as the unprivileged `postgres`
user (or `nobody`) with a data directory it owns. That user must be able to reach the directory:
a clone under root's home (0700) or under a `mktemp -d` directory is closed to it, so the cluster
then lives in a directory of that user's own under /var/tmp instead, named after the requested
path so that the next run finds its data again. Only processes started here are ever stopped.

A helper that fails raises DevServiceError, whose message carries the tool's own words (initdb's
stderr, the server log's last lines, redis-server's output), for the CLI to print as one line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.dev.errors import DevServiceError

__all__ = ["DevServiceError", "LocalPostgres", "LocalRedis", "WheelPostgres", "free_port", "postgres_answers",
           "postgres_bin_dir", "redis_answers", "start_postgres", "start_redis", "tcp_answers"]

RELOCATED_PREFIX = "plugin-gateway-pg-"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL; PostgreSQL refuses longer paths
LOG_SEVERITIES = ("PANIC:", "FATAL:", "ERROR:", "DETAIL:", "HINT:")


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

    from gateway.redis_urls import parse_redis_url

    if not url:
        return False
    try:
        kind = parse_redis_url(url).kind
    except ValueError:
        return False
    if kind != "single":  # Sentinel or Cluster: the gateway's own client says
        import asyncio

        from gateway.redis_link import RedisLink

        async def probe() -> bool:
            link = RedisLink(url, timeout)
            try:
                return await link.ping()
            finally:
                await link.close()

        return asyncio.run(probe())
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
    raise DevServiceError("running as root and there is no unprivileged user (postgres, nobody) "
                          "to run PostgreSQL as")


# --- what a failed tool said ------------------------------------------------------------------

def _said(text: str, tool: str, limit: int = 3) -> str:
    """A tool's output as one line: from its first error line on (else its last lines), without
    the `tool: ` prefix each line repeats."""
    lines = [line.strip().removeprefix(f"{tool}: ") for line in text.splitlines() if line.strip()]
    first_error = next((i for i, line in enumerate(lines) if re.search(r"\b(error|fatal|FATAL)\b", line)), None)
    chosen = lines[first_error:first_error + limit] if first_error is not None else lines[-limit:]
    return "; ".join(chosen) or "(no output)"


def _log_tail(log: Path, limit: int = 4) -> str:
    """Why the server stopped, from the end of its log: the FATAL/ERROR lines and their hints,
    and the `could not ...` lines that precede them, without the timestamp and pid prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-40:]
    except OSError as exc:
        return f"(no server log at {log}: {exc.strerror})"
    stripped = [re.sub(r"^\S+ \S+ \S+ \[\d+\] ", "", line).strip() for line in lines if line.strip()]
    meaningful = [re.sub(r"\s{2,}", " ", line) for line in stripped
                  if line.startswith(LOG_SEVERITIES) or "could not" in line]
    return "; ".join((meaningful or stripped)[-limit:]) or "(the server log is empty)"


# --- a data directory the server's user can reach -------------------------------------------

def _user_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _reaches(user: str, directory: Path) -> bool:
    """Whether `user` can search `directory`, which needs search permission on every ancestor
    too: asked of the kernel as that user, not worked out from modes (ACLs, mounts...)."""
    try:
        done = subprocess.run(["runuser", "-u", user, "--", "test", "-d", str(directory), "-a", "-x", str(directory)],
                              check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise DevServiceError(f"cannot run runuser to act as {user}: {exc.strerror}") from None
    return done.returncode == 0


def _refuse_non_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DevServiceError(f"cannot keep PostgreSQL's data in {path}: it exists and is not a directory")


def _make_dirs(directory: Path) -> None:
    _refuse_non_directory(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DevServiceError(f"cannot create {directory} for PostgreSQL's data: {exc.strerror}") from None


def _give_to(directory: Path, user: str) -> None:
    """`directory` (created if missing) owned by `user`, mode 0700 (PostgreSQL insists on it)."""
    _refuse_non_directory(directory)
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, *_user_ids(user))
        directory.chmod(0o700)
    except OSError as exc:
        raise DevServiceError(f"cannot use {directory} for PostgreSQL's data: {exc.strerror}") from None


def _own_shared_dir(directory: Path, user: str) -> None:
    """A directory in a world-writable place (/var/tmp) that only `user` may own: made here, or
    found as a real directory (not a symlink someone planted) already owned by `user`."""
    uid, gid = _user_ids(user)
    try:
        os.mkdir(directory, 0o700)
        os.chown(directory, uid, gid)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise DevServiceError(f"cannot create {directory} for PostgreSQL's data: {exc.strerror}") from None
    found = os.lstat(directory)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != uid:
        raise DevServiceError(f"{directory} exists but is not a directory owned by {user}: remove it and retry")
    os.chmod(directory, 0o700)


def _relocated_dir(requested: Path, user: str) -> Path:
    """The same directory on every run for the same requested path (a restart finds its data)."""
    digest = hashlib.sha256(str(requested.resolve()).encode()).hexdigest()[:12]
    for base in dict.fromkeys(("/var/tmp", tempfile.gettempdir(), "/tmp")):
        if _reaches(user, Path(base)):
            directory = Path(base) / f"{RELOCATED_PREFIX}{digest}"
            _own_shared_dir(directory, user)
            return directory
    raise DevServiceError(f"the {user} user can reach neither {requested.parent} nor /var/tmp nor /tmp, "
                          "so PostgreSQL has nowhere to keep its data: set DATABASE_URL")


def cluster_dir(requested: Path, user: str | None) -> Path:
    """Where a cluster asked for at `requested` lives: there, when the server's user can reach it
    (or we are that user); else in a directory of that user's own (see _relocated_dir)."""
    _make_dirs(requested.parent)
    if user is None:
        _make_dirs(requested)
        return requested
    if _reaches(user, requested.parent):
        _give_to(requested, user)
        return requested
    return _relocated_dir(requested, user)


def _socket_dir(directory: Path, port: int) -> str:
    """The Unix socket (and its .lock) beside the data, which its user owns; none at all when that
    path is too long for a socket (a deep clone), as everything here connects over TCP."""
    return str(directory) if len(f"{directory}/.s.PGSQL.{port}") <= SOCKET_PATH_MAX else ""


# --- PostgreSQL -------------------------------------------------------------------------------

@dataclass
class LocalPostgres:
    """A PostgreSQL cluster of our own on a loopback port. After start(), `data_dir` is where the
    cluster lives; `requested_dir` is set when that is not where it was asked for."""

    data_dir: Path
    port: int
    bin_dir: Path
    user: str | None
    requested_dir: Path | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def where(self) -> str:
        if self.requested_dir is None:
            return str(self.data_dir)
        return f"{self.data_dir} (the {self.user} user it runs as cannot reach {self.requested_dir})"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        try:
            return subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, errors="replace")
        except OSError as exc:
            raise DevServiceError(f"{tool} could not run: {exc.strerror}: {command[0]}") from None

    def start(self) -> LocalPostgres:
        directory = cluster_dir(self.data_dir, self.user)
        if directory != self.data_dir:
            self.requested_dir, self.data_dir = self.data_dir, directory
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._start_server()
        return self

    def _initdb(self) -> None:
        done = self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--no-sync", "--locale=C")
        if done.returncode != 0:
            raise DevServiceError(f"initdb failed: {_said(done.stderr, 'initdb')}")

    def _start_server(self) -> None:
        # A postmaster.pid already there may be a server we did not start: never stop that one.
        ours = not (self.data_dir / "postmaster.pid").exists()
        options = (f"-h 127.0.0.1 -p {self.port} -k {shlex.quote(_socket_dir(self.data_dir, self.port))} "
                   "-F -c fsync=off")
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                         "-o", options, "-w", "-t", "60", "start")
        if done.returncode == 0:
            return
        if ours:
            self.stop()  # one that did not come up in time may still be starting
        said = _said("\n".join(line for line in done.stderr.splitlines() if "Examine the log" not in line), "pg_ctl")
        raise DevServiceError(f"pg_ctl could not start PostgreSQL in {self.data_dir}: {said}; "
                              f"its log {self.log_file} ends: {_log_tail(self.log_file)}")

    def stop(self, *, discard: bool = False) -> None:
        """Stop this cluster (only it: pg_ctl names its data directory); with `discard`, delete
        its data too (a test's throwaway cluster, which may live outside the test's temp dir)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")  # not running: fine
        if discard:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class WheelPostgres:
    """PostgreSQL from the `pgserver` wheel (the `demo` extra), for machines without its binaries.
    pgserver itself runs the server as an unprivileged user when we are root."""

    server: Any
    data_dir: Path

    @property
    def dsn(self) -> str:
        return str(self.server.get_uri())

    def where(self) -> str:
        return str(self.data_dir)

    def stop(self, *, discard: bool = False) -> None:
        self.server.cleanup()
        if discard:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(data_dir: Path, port: int | None = None) -> LocalPostgres | WheelPostgres:
    bin_dir = postgres_bin_dir()
    if bin_dir is not None:
        return LocalPostgres(data_dir, port or free_port(), bin_dir, _unprivileged_user()).start()
    try:
        from pgserver.postgres_server import get_server
    except ImportError:
        raise DevServiceError("no PostgreSQL binaries found: install PostgreSQL (Debian: apt-get install "
                              "postgresql), pip install 'plugin-gateway[demo]' (pgserver), "
                              "or set DATABASE_URL") from None
    return WheelPostgres(get_server(str(data_dir), cleanup_mode="stop"), data_dir)


# --- Redis ------------------------------------------------------------------------------------

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


def _redis_said(output: IO[bytes]) -> str:
    output.seek(0)
    text = output.read().decode(errors="replace")
    # "1234:M 02 Dec 2025 06:55:00.123 # Failed listening on port 6379 (tcp), aborting."
    lines = [re.sub(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [#*.-] ", "", line).strip() for line in text.splitlines()]
    return "; ".join([line for line in lines if line][-2:]) or "(no output)"


def _wait_for_redis(process: subprocess.Popen[bytes], port: int, output: IO[bytes]) -> None:
    # PING, not a TCP connect: whatever else listens on the port would pass for redis.
    deadline = time.monotonic() + 10
    while not redis_answers(f"redis://127.0.0.1:{port}/0", 0.2):
        if process.poll() is not None:
            raise DevServiceError(f"redis-server failed on port {port}: {_redis_said(output)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise DevServiceError(f"redis-server did not answer on port {port} within 10 s: {_redis_said(output)}")
        time.sleep(0.05)


def start_redis(port: int | None = None) -> LocalRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevServiceError("redis-server not found: install it (Debian: apt-get install redis-server), "
                              "or set REDIS_URL")
    port = port or free_port()
    # Its output goes to an unlinked file, read only when it fails (a pipe nobody reads would fill).
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--loglevel", "warning"],
            stdout=output, stderr=subprocess.STDOUT)
        _wait_for_redis(process, port, output)
    return LocalRedis(process, port)
