"""The options and the entry point of `bench/run.py`."""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from .phases import Bench
from .processes import log
from .report import machine_facts, print_table, ratio_table, render
from .targets import BENCH_DIR

DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_REDIS_DB = 7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against nginx and a bare aiohttp proxy.")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the targets (default 3)")
    parser.add_argument("--connections", default="8,64", help="comma-separated connection counts (default 8,64)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3s runs, 1 round; prints only (RESULTS.md untouched unless --output)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway at 64 connections (bench/profile.svg)")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the gateway's log and py-spy's raw stack files to DIR before cleaning up")
    parser.add_argument("--skip-10k", action="store_true", help="skip the 10,000-routes phase")
    parser.add_argument("--skip-2-workers", action="store_true",
                        help="skip the 2-worker phase (the Redis-backed gateway with GATEWAY_WORKERS=2 against "
                             "the bare proxy in 2 processes)")
    parser.add_argument("--output", help="where to write the results (default bench/RESULTS.md; none with --quick)")
    parser.add_argument("--redis", default=DEFAULT_REDIS,
                        help=f"the Redis server for the limiter and cache targets (default {DEFAULT_REDIS})")
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB,
                        help=f"its database number, which must be empty (default {DEFAULT_REDIS_DB}); the run "
                             "deletes the keys it made there (pgw:*) at the end")
    parser.add_argument("--redis-timeout", type=float, default=1.0,
                        help="GATEWAY_REDIS_TIMEOUT of the Redis-backed gateway, seconds (default 1.0, so that "
                             "every limiter decision is taken in Redis; the gateway's own default is 0.05)")
    parser.add_argument("--skip-redis", action="store_true",
                        help="leave out the Redis-backed gateway (rate limiter, cache) and nginx proxy_cache")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3, 1
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.output is None and not args.quick:
        args.output = str(BENCH_DIR / "RESULTS.md")
    if args.duration <= 0 or args.rounds < 1 or not args.connections:
        parser.error("--duration and --rounds must be positive, --connections non-empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    machine = machine_facts()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bench = Bench(args, tmp)
    failed = False
    try:
        bench.main()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        failed = True
    except Exception:
        failed = True
        raise
    finally:
        # A second Ctrl-C must not leave processes or the temp dir behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            bench.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"stopped everything started, removed {tmp}")
        finally:
            signal.signal(signal.SIGINT, previous)
    if failed:
        return 130
    print_table(bench)
    report = render(bench, machine)
    if args.output:
        Path(args.output).write_text(report + "\n")
        log(f"results written to {args.output}")
        print("\n".join(ratio_table(bench)))
    else:
        print(report)  # the ratio table is its first section
    return 0
