"""How `gateway serve` (and `gateway demo`) run: gunicorn's arbiter over aiohttp workers.

The arbiter (this process) binds the listening socket and the metrics socket, then forks
GATEWAY_WORKERS workers (`GatewayWorker`, aiohttp's uvloop worker). Each worker imports the
application after the fork and builds its own app, event loop and pools (`GatewayApplication.load`),
so a worker started later — a replacement, or a SIGHUP — runs the code on disk at that time. The
arbiter imports only this module and gateway.settings; it never starts a thread, so forking it
is safe at any moment (gunicorn's control-socket thread is turned off for that reason).

Signals to the arbiter (gunicorn's semantics):
  SIGTERM          graceful stop: the listening sockets close at once (new connections are
                   refused), every worker closes its idle keep-alive connections and lets the
                   requests in flight finish within GATEWAY_DRAIN_SECONDS; then the arbiter exits 0.
  SIGINT, SIGQUIT  the same drain (aiohttp's worker drains on both), but the arbiter waits for it
                   only GATEWAY_DRAIN_SECONDS + STOP_MARGIN_SECONDS as well.
  SIGHUP           reload: the new code and settings are first checked in a fresh interpreter
                   (`check_reload`); if that fails the old workers keep serving and the error is
                   logged. Otherwise settings are read again (environment and .env), N new
                   workers start and the old ones drain. Connections wait in the listening
                   socket's queue while the new workers boot, so none is refused.
  SIGTTIN, SIGTTOU one worker more, one fewer.
A worker that dies is replaced. A worker whose arbiter disappears drains and exits.

Metrics: PROMETHEUS_MULTIPROC_DIR is set to a fresh directory before the first fork (and removed
at exit); every worker writes its values there and serves the merged sum on the shared metrics
socket (gateway/metrics_listener.py); `child_exit` → `mark_process_dead` drops a dead worker's
live gauges while its counters stay in the sums.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp.worker import GunicornUVLoopWebWorker
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from db.pool import Database
from gateway.logs import ACCESS_LOG
from gateway.settings import ConfigError, Settings

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("gateway.serve")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_MARGIN_SECONDS = 5.0  # beyond GATEWAY_DRAIN_SECONDS: the app's cleanup, process exit
CHECK_TIMEOUT_SECONDS = 120.0
REQUIRED_FOR_SERVE = ("database_url", "encryption_keys", "assertion_key", "jwt")

AppHook = Callable[["web.Application"], None]


def require_c_parser() -> None:
    """aiohttp's pure-Python HTTP parser is slower and has had request-smuggling bugs the C one
    did not: refuse to serve on it (it is used when AIOHTTP_NO_EXTENSIONS is set or the wheel
    has no compiled extension)."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser is not getattr(http_parser, "HttpRequestParserC", None):
        raise ConfigError("aiohttp's C HTTP parser is not available (AIOHTTP_NO_EXTENSIONS set, or no "
                          "compiled wheel for this platform); refusing to serve on the pure-Python fallback")


# --- the arbiter's side ----------------------------------------------------------------------

def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GatewayLogger(glogging.Logger):
    """gunicorn's own messages through the gateway's JSON handler (gateway/logs.py), not a
    second format on stderr; gunicorn's access log stays off (the gateway writes its own)."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self._access_log_enabled = False
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True
        self.error_log.setLevel(logging.INFO)
        self.access_log.disabled = True


class GatewayArbiter(Arbiter):
    # Narrower than gunicorn's: the arbiter is only given ours (GatewayApplication.run), and its
    # logger is set in setup(), before any signal is handled.
    app: GatewayApplication
    log: glogging.Logger

    def handle_hup(self) -> None:
        # gunicorn halts the whole server when new workers cannot boot: check first.
        problem = check_reload(self.app.environ)
        if problem:
            self.log.error("SIGHUP ignored, the workers keep serving: the new code or settings fail: %s", problem)
            return
        super().handle_hup()


class GatewayApplication(BaseApplication):
    def __init__(self, settings: Settings, *, host: str, port: int, workers: int,
                 configure_app: AppHook | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.settings, self.host, self.port, self.workers = settings, host, port, workers
        self.configure_app, self.environ = configure_app, environ
        self.metrics_sockets: list[socket.socket] = []
        self.configured = False
        super().__init__(prog="gateway serve")

    def load_config(self) -> None:
        if self.configured:  # a reload (SIGHUP): settings anew; check_reload has vetted them
            try:
                self.settings = _effective(Settings.from_env(self.environ))
            except ConfigError as exc:  # changed between the check and now: keep the old ones
                log.error("SIGHUP: settings unchanged: %s", exc)
        settings = self.settings
        for name, value in {
            "bind": [_bind_address(self.host, self.port)],
            "workers": self.workers,
            "worker_class": GatewayWorker,
            "graceful_timeout": math.ceil(settings.drain_seconds + STOP_MARGIN_SECONDS),
            "timeout": 30,  # a worker whose event loop is stuck that long is killed and replaced
            "backlog": 2048,
            "logger_class": GatewayLogger,
            "accesslog": None,
            "proc_name": "gateway",
            "control_socket_disable": True,  # a thread in the arbiter would make forking unsafe
            "child_exit": _child_exit,
            "on_exit": self._on_exit,
            "when_ready": self._when_ready,
        }.items():
            self.cfg.set(name, value)
        self.configured = True

    # gunicorn hands whatever load() returns to the worker class; its stubs allow only WSGI/ASGI
    # apps, and aiohttp's worker takes this factory of an AppRunner.
    def load(self) -> Callable[[], Any]:  # type: ignore[override]
        # Runs in the worker, after the fork: the application's code is imported here.
        return self._make_runner

    async def _make_runner(self) -> web.AppRunner:
        from gateway.app import create_app
        from gateway.connections import GatewayRunner
        from gateway.metrics_listener import METRICS_SOCKETS

        app = create_app(self.settings)
        app[METRICS_SOCKETS] = self.metrics_sockets
        if self.configure_app is not None:
            self.configure_app(app)
        return GatewayRunner(app, self.settings)

    def run(self) -> None:
        GatewayArbiter(self).run()

    def _when_ready(self, arbiter: Arbiter) -> None:
        print(f"gateway listening on http://{_bind_address(self.host, self.port)} "
              f"({self.workers} worker{'s' if self.workers > 1 else ''}, arbiter pid {os.getpid()})", flush=True)

    def _on_exit(self, arbiter: Arbiter) -> None:
        for sock in self.metrics_sockets:
            sock.close()
        log.info("gateway stopped")


def _child_exit(arbiter: Arbiter, worker: Any) -> None:
    from prometheus_client import multiprocess  # after PROMETHEUS_MULTIPROC_DIR is set

    multiprocess.mark_process_dead(worker.pid)


GC_THRESHOLD = 20_000  # allocations minus deallocations between generation-0 collections


class GatewayWorker(GunicornUVLoopWebWorker):
    """aiohttp's uvloop worker. The app comes as a GatewayRunner (gateway/connections.py), which
    carries the server options and the connection bounds that aiohttp's default runner lacks."""

    def init_process(self) -> None:
        # Each request allocates a few hundred short-lived objects: with CPython's default
        # generation-0 threshold (700) the collector would run every two or three requests. The
        # long-lived state (the route table) is frozen after each load (gateway/proxy/runtime.py),
        # so the rarer collections walk only what requests made.
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM: start draining now. gunicorn's handler only clears `alive`, which aiohttp's
        # worker looks at once a second; meanwhile it would go on accepting new connections.
        super().handle_exit(sig, frame)
        self._notify_waiter_done()


def _effective(settings: Settings) -> Settings:
    from gateway.connections import fit_open_file_limit

    return dataclasses.replace(settings, max_connections=fit_open_file_limit(settings.max_connections))


# --- checking a reload ----------------------------------------------------------------------

def check_reload(environ: Mapping[str, str] | None = None) -> str | None:
    """Import the application as it is on disk now, in a fresh interpreter with this process's
    import path, and build it with settings read anew from `environ` (default: this process's);
    None when that works, else its error."""
    code = f"import sys; sys.path[:] = {sys.path!r}; from gateway.serve import _check; _check()"
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k != MULTIPROC_ENV}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_SECONDS, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the check could not run: {exc}"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"the check exited with {done.returncode}"


def _check() -> None:
    try:
        settings = Settings.from_env()
        settings.require(*REQUIRED_FOR_SERVE)
        require_c_parser()
        from gateway.app import create_app

        create_app(settings)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the reload must not happen
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


# --- the entry point --------------------------------------------------------------------------

async def database_role_refused(settings: Settings) -> str | None:
    """Why the gateway must not start on this database (its queries would not be held by
    row-level security), or None. PostgreSQL not answering is no reason: the gateway starts and
    serves what it knows; every worker checks again when its pool opens (db/pool.py)."""
    database = Database(settings.database_url, role=settings.db_role)
    try:
        await asyncio.wait_for(database.connect(), timeout=3)
    except asyncio.TimeoutError:
        return None
    finally:
        await database.close()
    return database.refused


def serve(settings: Settings, *, host: str, port: int, workers: int,
          configure_app: AppHook | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; `configure_app` is called on each worker's app (the
    demo adds its plugin there); `environ` is where a SIGHUP reads the settings again (default:
    the process environment; the demo passes its own). Returns the exit status."""
    settings.require(*REQUIRED_FOR_SERVE)
    require_c_parser()
    refused = asyncio.run(database_role_refused(settings))
    if refused:
        log.critical("refusing to start: %s", refused)
        return 1
    if workers > 1 and not settings.redis_url:
        log.warning("%d workers without REDIS_URL: rate limits and the response cache are per worker", workers)
    if "prometheus_client.values" in sys.modules and not os.environ.get(MULTIPROC_ENV):
        raise RuntimeError("prometheus_client was imported before serve() chose multiprocess mode")
    own_dir = not os.environ.get(MULTIPROC_ENV)
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    metrics_sockets: list[socket.socket] = []
    arbiter_pid = os.getpid()
    try:
        if settings.metrics_port:
            metrics_sockets = bind(settings.metrics_host, settings.metrics_port)
        application = GatewayApplication(_effective(settings), host=host, port=port, workers=workers,
                                         configure_app=configure_app, environ=environ)
        application.metrics_sockets = metrics_sockets
        application.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if os.getpid() != arbiter_pid:
            # A worker leaves gunicorn with SystemExit, through the frames it inherited from the
            # arbiter: it must not run their clean-ups (this function's, the demo's database stop).
            ACCESS_LOG.flush()  # the last turn's access lines (written once per loop turn)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    finally:
        for sock in metrics_sockets:
            sock.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
    return 0
