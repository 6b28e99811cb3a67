"""Where the time goes: py-spy recordings of a process under wrk's load, and their summaries (the
request path's parts, components, heaviest frames, the garbage collector's share)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import Run, run_wrk
from .processes import children_of, cpu_seconds
from .targets import Target

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
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        python = [f for f in frames if is_python_frame(f)]
        if not python:
            continue
        if python[-1].startswith("_worker (concurrent/futures/thread.py"):
            continue  # an executor thread waiting for work: idle, whatever py-spy thinks
        native_leaf = "" if is_python_frame(frames[-1]) else frames[-1]
        stacks.append((python, int(count_text), any(f.startswith(GC_FRAME) for f in frames), native_leaf))
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
    # `gateway serve` is gunicorn's arbiter: the requests are served by its worker, the busiest child.
    children = children_of(pid)
    if children:
        pid = max(children, key=lambda child: cpu_seconds([child]))
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
        total = max(1, int(self.summary["total"]))
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
