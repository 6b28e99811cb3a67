"""Measuring: wrk runs with the CPU each process used meanwhile, alternating rounds and their
medians, the gateway's counters around each run, the garbage-collection probe, the gateway's log."""

from __future__ import annotations

import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .processes import cpu_seconds, cpu_split, log, machine_busy_seconds
from .seeding import PLUGIN_SLUG
from .targets import Target

ROOT = Path(__file__).resolve().parents[2]
WRK_THREADS = 2
WRK_DONE = Path(__file__).resolve().parent / "wrk_done.lua"
# The gateway's counters read around each run of a Redis-backed target.
GATEWAY_COUNTERS = ("gateway_rate_limit_fallback_total", "gateway_rate_limited_total",
                    "gateway_dependency_errors_total", "gateway_cache_total", "gateway_requests_total")
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
# When each target's wrk runs ended (time.time()), for reading the gateways' logs: what they log
# within a second of an end is about wrk dropping its connections, not about the gateway.
RUN_ENDS: dict[str, list[float]] = {}


def write_wrk_script(path: Path, headers: dict[str, str]) -> Path:
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE.read_text())
    return path


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
        log(f"  {target.key:<18} c={connections:<3} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
            f"p99 {run.p99_ms:6.2f} ms  cpu {server_cpu:5.2f}s (+upstream {upstream_cpu:4.2f}s{extra}, "
            f"other {run.other_cpu:4.2f}s){flag}")
    return run


def alternating_rounds(targets: list[Target], connections: list[int], rounds: int, duration: int,
                       phase: str) -> list[Run]:
    runs = []
    for number in range(rounds):
        # Rotate the order each round so no target always runs first (or right after another).
        order = targets[number % len(targets):] + targets[:number % len(targets)]
        log(f"{phase} round {number + 1}/{rounds}")
        for conns in connections:
            for target in order:
                run = run_wrk(target, conns, duration, phase)
                run.round = number
                runs.append(run)
    return runs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary_rows(runs: list[Run], phase: str) -> dict[tuple[str, int], dict[str, float]]:
    """Per (target, connections) of a phase: the medians over the rounds, and totals."""
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


def gc_probe(dsn: str) -> list[dict[str, Any]] | str:
    """How long one full garbage collection takes in a process holding the gateway's proxy state
    built from these rows, with the benchmarked route alone and with all of them (gc_probe.py)."""
    try:
        done = subprocess.run([sys.executable, "-m", "bench.harness.gc_probe", dsn, PLUGIN_SLUG],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        if done.returncode != 0:
            return f"probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        found: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        return found
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return f"probe failed: {exc}"


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
