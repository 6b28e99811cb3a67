"""What a run found: RESULTS.md (every table) and the ratio table the issue asks for, printed at the
end of every run."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .measure import WRK_THREADS, median, paired_ratios, summary_rows
from .profile import LIMITER_CACHE_FRAMES, PROFILE_RATE, Profile
from .seeding import BENCH_CACHE_TTL, BENCH_RATE_LIMIT, BENCH_RATE_WINDOW, CACHED_ROUTE, LIMITED_ROUTE, TARGET_ROUTES
from .targets import UPSTREAM_BODY

if TYPE_CHECKING:
    from .phases import Bench

ROOT = Path(__file__).resolve().parents[2]
GOAL_RATIO_BARE = 0.75
GOAL_P99_MS_AT_8 = 3.0
GOAL_10K_COST = 0.05
GOAL_LIMITER_COST = 0.10
GOAL_CACHE_VS_BARE = 1.5
GOAL_P99_VS_BARE = 2.0  # the gateway's p99 at 8 connections over the bare proxy's
# The table "Throughput and latency" and its ratios: the issue-3 figure, unchanged.
MAIN_TARGETS = ("upstream", "nginx-proxy", "bare-aiohttp", "gateway")


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
    out.extend(ratio_table(bench))
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
    if "gateway-2w" in labels:
        out.extend(render_two_workers(bench))
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
    g10, b10 = ten.get(("gateway", 64)), ten.get(("bare-aiohttp", 64))
    if g10 and b10 and gw64 and bare64:
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
    if "gateway_2w_log" in bench.facts:
        w("## 2-worker gateway log\n")
        out.extend(log_findings(bench.facts.get("gateway_2w_log")))
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
          f"Redis held {limiter['redis_keys']} window key (`pgw:rl:…`) counting {limiter['redis_count']} (counts "
          "are reserved ahead in blocks while the limit is far, so Redis may be up to one block ahead).")
    if after:
        w(f"After the rounds (warm-up and checks included): Redis had counted {after['redis_count']:,} (blocks reserved) "
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
    for label, sampled in (("bare aiohttp proxy", bare), ("gateway, 1 route", gw), ("gateway, 10,000 routes", gw10k)):
        if sampled is None:
            continue
        share = sampled.summary["gc"] / max(1, sampled.summary["total"])
        w(f"| {label} | {share:.1%} | {sampled.us_per_request(sampled.summary['gc']):.0f} | {sampled.run.rps:,.0f} | "
          f"{sampled.run.server_cpu / max(1, sampled.run.requests) * 1e6:.0f} |")
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
        recorded = profiles.get(key)
        if recorded is None:
            continue
        w(f"Heaviest frames by self time, {title}:\n")
        w("| self | µs/req | function |")
        w("|---:|---:|---|")
        total = max(1, recorded.summary["total"])
        for frame, samples in recorded.summary["self"][:12]:
            w(f"| {samples / total:.1%} | {recorded.us_per_request(samples):.1f} | `{frame}` |")
        w("")
    return out


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
    print()
    print(f"{'target':<20}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU s':>8}{'µs/req':>8}{'errors':>8}")
    for phase in ("main", "2w"):
        rows = summary_rows(bench.runs, phase)
        for key in bench.facts.get("targets", {}):
            for conns in bench.args.connections:
                row = rows.get((key, conns))
                if row:
                    print(f"{key:<20}{conns:>6}{row['rps']:>11,.0f}{row['p50']:>9.2f}{row['p99']:>9.2f}"
                          f"{row['cpu']:>8.2f}{row['cpu_us_per_req']:>8.0f}{row['errors'] + row['non_2xx']:>8}")
    print()


@dataclass(frozen=True)
class Lineup:
    """Which targets of which phase give the ratio table's figures for one worker count."""
    phase: str
    full_pipeline: str
    bare: str
    unlimited: str  # the route without limit of the gateway whose limited route is `limited`
    limited: str
    cached: str


ONE_WORKER = Lineup("main", "gateway", "bare-aiohttp", "gateway-redis", "gateway-limited", "gateway-cached")
TWO_WORKERS = Lineup("2w", "gateway-2w", "bare-aiohttp-2p", "gateway-2w", "gateway-2w-limited", "gateway-2w-cached")


def ratio_table(bench: Bench) -> list[str]:
    """The issue's figures side by side: 1 worker against the bare proxy in one process (with its
    goals), 2 workers against the bare proxy in two processes (reported: on this machine's two
    cores wrk and the upstream compete with them)."""
    connections = bench.args.connections
    rows = {lineup: summary_rows(bench.runs, lineup.phase) for lineup in (ONE_WORKER, TWO_WORKERS)}

    def row(lineup: Lineup, key: str, conns: int) -> dict[str, float] | None:
        return rows[lineup].get((key, conns))

    def throughput(lineup: Lineup, key: str, conns: int) -> float | None:
        measured, bare = row(lineup, key, conns), row(lineup, lineup.bare, conns)
        return ratio(measured["rps"], bare["rps"]) if measured and bare else None

    def limiter_cost(lineup: Lineup, conns: int) -> float | None:
        limited, unlimited = row(lineup, lineup.limited, conns), row(lineup, lineup.unlimited, conns)
        return 1 - ratio(limited["rps"], unlimited["rps"]) if limited and unlimited else None

    def p99_over_bare(lineup: Lineup) -> tuple[float, float, float] | None:
        gateway, bare = row(lineup, lineup.full_pipeline, 8), row(lineup, lineup.bare, 8)
        return (ratio(gateway["p99"], bare["p99"]), gateway["p99"], bare["p99"]) if gateway and bare else None

    def times(value: float | None) -> str:
        return f"{value:.2f}×" if value is not None else "—"

    def share(value: float | None) -> str:
        return f"{value:+.1%}" if value is not None else "—"

    def verdict(value: float | None, met: bool) -> str:
        return "—" if value is None else "met" if met else "NOT met"

    lines = []
    for conns in connections:
        one, two = (throughput(lineup, lineup.full_pipeline, conns) for lineup in (ONE_WORKER, TWO_WORKERS))
        lines.append(f"| full pipeline / bare aiohttp proxy, {conns} conns | ≥ {GOAL_RATIO_BARE:.2f}× | {times(one)} | "
                     f"{verdict(one, one is not None and one >= GOAL_RATIO_BARE)} | {times(two)} |")
    for conns in connections:
        one, two = (limiter_cost(lineup, conns) for lineup in (ONE_WORKER, TWO_WORKERS))
        lines.append(f"| never-reached rate limit: cost (1 − limited / unlimited), {conns} conns | "
                     f"≤ {GOAL_LIMITER_COST:.0%} | {share(one)} | "
                     f"{verdict(one, one is not None and one <= GOAL_LIMITER_COST)} | {share(two)} |")
    for conns in connections:
        one, two = (throughput(lineup, lineup.cached, conns) for lineup in (ONE_WORKER, TWO_WORKERS))
        lines.append(f"| cache hits / bare aiohttp proxy, {conns} conns | ≥ {GOAL_CACHE_VS_BARE:.1f}× | {times(one)} | "
                     f"{verdict(one, one is not None and one >= GOAL_CACHE_VS_BARE)} | {times(two)} |")
    if 8 in connections:
        cells = []
        for lineup in (ONE_WORKER, TWO_WORKERS):
            found = p99_over_bare(lineup)
            cells.append(f"{found[0]:.2f}× ({found[1]:.2f} / {found[2]:.2f} ms)" if found else "—")
        one_p99 = p99_over_bare(ONE_WORKER)
        lines.append(f"| p99 at 8 conns: full pipeline / bare aiohttp proxy | ≤ {GOAL_P99_VS_BARE:.0f}× | {cells[0]} | "
                     f"{verdict(one_p99 and one_p99[0], one_p99 is not None and one_p99[0] <= GOAL_P99_VS_BARE)} | "
                     f"{cells[1]} |")
    return [
        "## Ratio table\n",
        f"Medians over {bench.args.rounds} alternating round{'s' if bench.args.rounds > 1 else ''}, every target "
        "in the same run. *1 worker*: `gateway serve` with one process against the bare aiohttp proxy in one "
        "process; the limiter's cost is the Redis-backed gateway's rate-limited route against its route without "
        "limit, cache hits are its cached route. *2 workers*: a second node of the Redis-backed gateway "
        "(same database and Redis) with `GATEWAY_WORKERS=2`, all three figures from its routes, against the bare "
        "proxy in two processes sharing one port; reported without a verdict, since on this machine the same "
        "cores also carry wrk and the upstream. A dash: not measured in this run (`--skip-redis`, "
        "`--skip-2-workers`; the p99 row needs 8 in `--connections`).\n",
        "| figure | goal | 1 worker | verdict | 2 workers (reported) |",
        "|---|---:|---:|---|---:|",
        *lines,
        "",
    ]


def render_two_workers(bench: Bench) -> list[str]:
    rows = summary_rows(bench.runs, "2w")
    labels = bench.facts.get("targets", {})
    out = ["## 2 workers\n",
           "After the main rounds: the bare aiohttp proxy in two processes (`bench/bare_proxy.py --reuse-port`, "
           "the kernel spreads the connections) and a second node of the Redis-backed gateway, `gateway serve` "
           "with `GATEWAY_WORKERS=2` on the same database and Redis, in alternating rounds of their own. Ratios "
           "are in the ratio table at the top.\n",
           "| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | server CPU µs/req | "
           "decisions without Redis | cache outcome in the runs | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for key in TWO_WORKERS.bare, TWO_WORKERS.full_pipeline, TWO_WORKERS.limited, TWO_WORKERS.cached:
        for conns in bench.args.connections:
            row = rows.get((key, conns))
            if row is None:
                continue
            fallback_cell = f"{row['fallbacks']:,.0f}" if key == TWO_WORKERS.limited else "—"
            decided = row["hit"] + row["miss"] + row["bypass"]
            outcome = (f"{row['hit']:,.0f} HIT, {row['miss']:,.0f} MISS ({ratio(row['hit'], decided):.2%} HIT)"
                       if key == TWO_WORKERS.cached and decided else "?" if key == TWO_WORKERS.cached else "no cache")
            out.append(f"| {labels[key]} | {conns} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} | "
                       f"{row['p50']:.2f} | {row['p99']:.2f} | {row['cpu_us_per_req']:.0f} | {fallback_cell} | "
                       f"{outcome} | {errors_cell(row)} |")
    out.append("")
    return out
