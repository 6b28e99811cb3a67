"""The processes a run starts, stopped again by their own pid; their CPU time from /proc; waiting
until a server answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process this run starts, stopped in reverse order by its own pid (and, for a
    process that leaves children, its own session: each is started in a new session)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

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

    @staticmethod
    def _stop(name: str, proc: subprocess.Popen[bytes], out: IO[bytes]) -> None:
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


def process_tree(*procs: subprocess.Popen[bytes]) -> Callable[[], list[int]]:
    """The processes and their children (nginx's worker, gunicorn's workers), looked up at each
    call: a worker that is replaced is still counted."""
    return lambda: [pid for proc in procs for pid in (proc.pid, *children_of(proc.pid))]


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


def wait_log_line(path: Path, text: str, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while starting:\n{tail(path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path} within {within}s:\n{tail(path)}")
        time.sleep(0.1)


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as log_file:
        log_file.seek(max(0, path.stat().st_size - 64 * 1024))
        return "\n".join(log_file.read().decode(errors="replace").splitlines()[-lines:])


def readyz(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            found: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        found = json.loads(exc.read())
    return found


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
