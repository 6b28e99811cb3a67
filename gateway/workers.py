"""How `gateway serve` runs: one process, or a master that pre-forks worker processes.

One process (`--workers 1`): the app serves in this process; SIGTERM or SIGINT drains it.

Several (`--workers N`, N > 1): the master binds the listening socket once (SO_REUSEADDR, not
SO_REUSEPORT: one accept queue, owned by the master, so that connections waiting in it outlive
any worker), then forks N workers. Each worker builds its own event loop and its own app
(`create_app`: database pool, upstream session, route table) and accepts from the inherited
socket. The master imports none of the application, so that a worker started later (a
replacement, a rolling restart) loads the application code found on disk at that time.

Signals to the master:
  SIGTERM, SIGINT  graceful stop: every worker drains, the master waits for them (at most
                   GATEWAY_DRAIN_SECONDS + STOP_MARGIN_SECONDS, then SIGKILL), exits 0.
  SIGHUP           rolling restart, one worker at a time: start a new worker, wait until it
                   serves, then drain one old worker. A worker that fails to start aborts the
                   restart and the old workers keep serving. Configuration is not re-read (the
                   workers get the master's settings); application code is.
A worker that dies is replaced (after a back-off when workers die before serving). A worker
whose master disappears drains and exits.

Signals to a worker, or to the single process:
  SIGTERM, SIGINT  drain: stop accepting, close idle keep-alive connections, let requests in
                   flight finish (at most GATEWAY_DRAIN_SECONDS), run the app's cleanup (pools
                   closed), exit 0.
  SIGHUP           ignored (only the master acts on it).

After SIGTERM new connections are refused: the single process closes its listening socket at
once; a master closes its copy as soon as it forwards the stop, and each worker closes its own
when it stops accepting, so the socket is gone within milliseconds while requests still drain.

Metrics: with workers, PROMETHEUS_MULTIPROC_DIR is set to a fresh directory before the first
fork (and removed at exit); every worker writes its metrics there and the master alone serves
GET /metrics on GATEWAY_METRICS_PORT, merging all of them (prometheus_client's multiprocess
mode). Counters of workers that exited stay in the sums; live gauges of a dead worker are
dropped. With one process, the app's own metrics listener serves its registry as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from aiohttp import web

from gateway import eventloop
from gateway.settings import ConfigError, Settings

log = logging.getLogger("gateway.workers")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
RESTART_SIGNAL = signal.SIGHUP
BACKLOG = 1024
STOP_MARGIN_SECONDS = 10.0  # beyond GATEWAY_DRAIN_SECONDS: the app's cleanup, process exit
START_TIMEOUT_SECONDS = 60.0  # a worker not serving by then is killed (and counts as failed)
MAX_BACKOFF_SECONDS = 30.0
READY = b"R"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# --- sockets -------------------------------------------------------------------------------

def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (as aiohttp's run_app would bind)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


# --- serving one app (the single process, and each worker) ------------------------------

async def serve_app(app: web.Application, sockets: list[socket.socket], drain_seconds: float, *,
                    on_ready: Callable[[], None] | None = None, master_fd: int | None = None) -> None:
    """Serve `app` on already-listening sockets until SIGTERM/SIGINT (or EOF on `master_fd`:
    the master is gone), then drain: stop accepting, close idle connections, wait for the
    requests in flight (at most `drain_seconds`), clean the app up."""
    from gateway.app import SERVER_OPTIONS

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop(reason: str) -> None:
        if not stop.is_set():
            log.info("pid %d: %s, draining (at most %g s)", os.getpid(), reason, drain_seconds)
            stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, request_stop, sig.name)
    if master_fd is None:  # a single process (a worker ignores SIGHUP: the master acts on it)
        loop.add_signal_handler(RESTART_SIGNAL, log.warning,
                                "SIGHUP ignored: rolling restarts need a master (gateway serve --workers N, N > 1)")
    else:
        def master_gone() -> None:
            with contextlib.suppress(BlockingIOError):
                if not os.read(master_fd, 64):
                    loop.remove_reader(master_fd)
                    request_stop("the master is gone")
        loop.add_reader(master_fd, master_gone)

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=drain_seconds, **SERVER_OPTIONS)  # type: ignore[arg-type]
    try:
        # The app's start-up may wait (a few seconds for readiness while PostgreSQL is away): a
        # stop in the meantime cancels it, and the cleanup below closes what had been opened.
        setup = asyncio.ensure_future(runner.setup())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({setup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not setup.done():
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
        else:
            setup.result()
        if not stop.is_set():
            for sock in sockets:
                await web.SockSite(runner, sock, backlog=BACKLOG).start()
            if on_ready is not None:
                on_ready()
            await stop.wait()
    finally:
        for site in list(runner.sites):
            await site.stop()  # no new connections from here on
        # Connections accepted just before the stop get their protocol two loop iterations later:
        # let that happen, so that the drain below sees (and waits for) them too.
        await asyncio.sleep(0.05)
        await runner.cleanup()  # close idle keep-alives, wait for requests in flight, app cleanup
        log.info("pid %d: stopped", os.getpid())


def serve_single(app: web.Application, host: str, port: int, drain_seconds: float) -> None:
    sockets = bind_sockets(host, port)

    def ready() -> None:
        print(f"gateway listening on http://{host}:{port}", flush=True)

    try:
        eventloop.run(serve_app(app, sockets, drain_seconds, on_ready=ready))
    finally:
        _close_all(sockets)


# --- master and workers ------------------------------------------------------------------

class WorkerFailed(Exception):
    pass


@dataclasses.dataclass(eq=False)
class _Worker:
    pid: int
    ready_fd: int
    ready: asyncio.Future[None]
    extra: bool = False  # started by a rolling restart, not yet standing in for an old worker
    stopping: bool = False  # sent SIGTERM (or SIGKILL): its exit is expected


class Master:
    def __init__(self, settings: Settings, host: str, port: int, count: int, metrics_dir: str) -> None:
        self.settings = settings
        self.host, self.port, self.count = host, port, count
        self.metrics_dir = metrics_dir
        self.sockets: list[socket.socket] = []
        self.metrics_sockets: list[socket.socket] = []
        self.workers: dict[int, _Worker] = {}
        self.started = False
        self.stopping = False
        self.backoff = 0.0
        self.restart_requested = False
        self.restart_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # a worker exited
        self.stop_event = asyncio.Event()
        self.master_r, self.master_w = -1, -1  # workers watch master_r for EOF (the master died)

    # Start-up and shut-down ---------------------------------------------------------------

    def bind(self) -> None:
        self.sockets = bind_sockets(self.host, self.port)
        if self.settings.metrics_port:
            try:
                self.metrics_sockets = bind_sockets(self.settings.metrics_host, self.settings.metrics_port)
            except ConfigError:
                _close_all(self.sockets)
                raise

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.master_r, self.master_w = os.pipe()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(RESTART_SIGNAL, self._on_restart_signal)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        metrics_runner = await self._start_metrics()
        try:
            for _ in range(self.count):
                self._spawn()
            try:
                await self._wait_ready(list(self.workers.values()), self.stop_event)
            except WorkerFailed as exc:
                log.error("gateway did not start: %s", exc)
                return 1
            if self.stop_event.is_set():
                return 0
            self.started = True
            print(f"gateway listening on http://{self.host}:{self.port} "
                  f"({self.count} workers, master pid {os.getpid()})", flush=True)
            while not self.stop_event.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 1.0)
                self._reap()  # besides SIGCHLD: signals of the same kind coalesce
            return 0
        finally:
            await self._shutdown()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            for fd in (self.master_r, self.master_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _start_metrics(self) -> web.AppRunner | None:
        if not self.metrics_sockets:
            return None
        from prometheus_client import CollectorRegistry, multiprocess

        from gateway.metrics_listener import metrics_app

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)
        runner = web.AppRunner(metrics_app(registry), access_log=None)
        await runner.setup()
        for sock in self.metrics_sockets:
            await web.SockSite(runner, sock).start()
        return runner

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if not self.stop_event.is_set():
            log.info("master: %s, stopping %d workers", sig.name, len(self.workers))
            self.stop_event.set()

    async def _shutdown(self) -> None:
        self.stopping = True
        for task in [*self.tasks, *([self.restart_task] if self.restart_task else [])]:
            task.cancel()
        for worker in list(self.workers.values()):
            self._stop_worker(worker)
        _close_all(self.sockets)  # refused from here on, once the workers closed their copies
        deadline = self.settings.drain_seconds + STOP_MARGIN_SECONDS
        if not await self._wait_all_exited(deadline):
            log.warning("master: %d workers still running after %g s, killing them", len(self.workers), deadline)
            for worker in list(self.workers.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            await self._wait_all_exited(5.0)
        log.info("master: stopped")

    async def _wait_all_exited(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.workers:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            self._reap()
        return True

    # Workers --------------------------------------------------------------------------------

    def _spawn(self, *, extra: bool = False) -> _Worker:
        loop = asyncio.get_running_loop()
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked until the child has put its own handlers in place: a signal in between must
        # neither kill the child nor reach the master's loop through the inherited wakeup fd.
        handled = {*STOP_SIGNALS, RESTART_SIGNAL, signal.SIGCHLD}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(ready_r, ready_w, previous)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        worker = _Worker(pid, ready_r, loop.create_future(), extra=extra)
        self.workers[pid] = worker
        loop.add_reader(ready_r, self._on_ready_pipe, worker)
        loop.call_later(START_TIMEOUT_SECONDS, self._start_timeout, worker)
        log.info("master: started worker %d", pid)
        return worker

    def _child(self, ready_r: int, ready_w: int, mask: set[int | signal.Signals]) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)  # it is the master's loop's
            for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(RESTART_SIGNAL, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # The master's file descriptors: never touched again here (in particular not the
            # master loop's epoll, shared with the master). Those that would keep something
            # of the master's open are closed.
            os.close(ready_r)
            os.close(self.master_w)
            for worker in self.workers.values():
                with contextlib.suppress(OSError):
                    os.close(worker.ready_fd)
            _close_all(self.metrics_sockets)
            code = _worker_main(self.settings, self.sockets, ready_w, self.master_r)
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _on_ready_pipe(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if READY in data and not worker.ready.done():
            worker.ready.set_result(None)
            self.backoff = 0.0
            log.info("master: worker %d serving", worker.pid)
        if not data:  # the worker closed its end (after READY) or exited
            self._close_ready_fd(worker)

    def _close_ready_fd(self, worker: _Worker) -> None:
        if worker.ready_fd >= 0:
            asyncio.get_running_loop().remove_reader(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _start_timeout(self, worker: _Worker) -> None:
        if not worker.ready.done() and self.workers.get(worker.pid) is worker:
            log.error("master: worker %d not serving after %g s, killing it", worker.pid, START_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    def _stop_worker(self, worker: _Worker) -> None:
        worker.stopping = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_exit(pid, os.waitstatus_to_exitcode(status))

    def _on_exit(self, pid: int, code: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)  # its live gauges go; counters stay
        worker = self.workers.pop(pid, None)
        self.changed.set()
        if worker is None:
            return
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        served = worker.ready.done() and worker.ready.exception() is None
        if not worker.ready.done():
            worker.ready.set_exception(WorkerFailed(f"worker {pid} exited before serving ({how})"))
            worker.ready.exception()  # retrieved: no "never retrieved" warning when nobody waits
        if worker.ready_fd >= 0:
            self._on_ready_pipe(worker)  # whatever it wrote last
            self._close_ready_fd(worker)
        if worker.stopping or self.stopping or worker.extra or not self.started:
            log.info("master: worker %d exited (%s)", pid, how)
            return
        if not served:
            self.backoff = min(max(1.0, self.backoff * 2), MAX_BACKOFF_SECONDS)
        log.warning("master: worker %d died (%s); starting another%s", pid, how,
                    f" in {self.backoff:g} s" if not served else "")
        self._background(self._replace(0.0 if served else self.backoff))

    async def _replace(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if not self.stopping:
            self._spawn()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _wait_ready(self, workers: list[_Worker], stop: asyncio.Event | None = None) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.shield(w.ready)) for w in workers]
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            pending: set[asyncio.Future[Any]] = set(waits)
            while pending:
                done, pending = await asyncio.wait(
                    pending | ({stopper} if stopper else set()), return_when=asyncio.FIRST_COMPLETED)
                if stopper is not None:
                    if stopper in done:
                        return
                    pending.discard(stopper)
                for future in done:
                    future.result()  # raises WorkerFailed
        finally:
            for future in [*waits, *([stopper] if stopper else [])]:
                future.cancel()

    # Rolling restart -------------------------------------------------------------------------

    def _on_restart_signal(self) -> None:
        if self.stopping or not self.started:
            log.warning("master: SIGHUP ignored while starting or stopping")
            return
        self.restart_requested = True
        if self.restart_task is None or self.restart_task.done():
            self.restart_task = asyncio.get_running_loop().create_task(self._rolling_restart())

    async def _rolling_restart(self) -> None:
        while self.restart_requested and not self.stopping:
            self.restart_requested = False
            old = [w for w in self.workers.values() if not w.stopping and not w.extra]
            log.info("master: SIGHUP, rolling restart of %d workers", len(old))
            for worker in old:
                if self.stopping:
                    return
                if worker.pid not in self.workers or worker.stopping:
                    continue  # died meanwhile: its replacement already runs the new code
                new = self._spawn(extra=True)
                try:
                    await self._wait_ready([new])
                except WorkerFailed as exc:
                    log.error("master: rolling restart aborted, the old workers keep serving: %s", exc)
                    return
                new.extra = False
                if worker.pid in self.workers:
                    self._stop_worker(worker)
                else:  # the old one died while the new one started: one too many now
                    self._stop_worker(new)
            log.info("master: rolling restart done")


def _worker_main(settings: Settings, sockets: list[socket.socket], ready_w: int, master_r: int) -> int:
    from gateway.app import create_app

    def ready() -> None:
        os.write(ready_w, READY)
        os.close(ready_w)

    # The master alone serves /metrics (every worker's, from PROMETHEUS_MULTIPROC_DIR).
    app = create_app(dataclasses.replace(settings, metrics_port=0))
    eventloop.run(serve_app(app, sockets, settings.drain_seconds, on_ready=ready, master_fd=master_r))
    return 0


def _enable_multiprocess_metrics() -> str:
    """A fresh PROMETHEUS_MULTIPROC_DIR, set before prometheus_client creates any value."""
    if "gateway.metrics" in sys.modules:
        raise RuntimeError("gateway.metrics was imported before the master set up multiprocess metrics")
    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[MULTIPROC_ENV] = path
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):  # imported before: choose again
        values.ValueClass = values.get_value_class()
    return path


def run_master(settings: Settings, host: str, port: int, workers: int) -> int:
    if not settings.redis_url:
        log.warning("%d workers without REDIS_URL: rate limits and the response cache are per worker", workers)
    metrics_dir = _enable_multiprocess_metrics()
    try:
        master = Master(settings, host, port, workers, metrics_dir)
        master.bind()
        try:
            return asyncio.run(master.run())
        finally:
            _close_all(master.sockets)
            _close_all(master.metrics_sockets)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(MULTIPROC_ENV, None)
