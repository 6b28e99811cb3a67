#!/usr/bin/env python3
"""Benchmark the gateway's proxy against nginx and a bare aiohttp proxy, side by side.

    python bench/run.py [--duration 10] [--rounds 3] [--quick] [--profile]

Starts (and stops again, also on Ctrl-C or errors) everything it measures:
  upstream      nginx answering a fixed ~100-byte JSON, called directly
  nginx-proxy   a second nginx, a plain reverse proxy to it (upstream keep-alive on)
  bare-aiohttp  bench/bare_proxy.py: one process, one ClientSession, no checks
  gateway       `gateway serve` (one process) with the full pipeline: an approved service whose
                route targets the upstream, installed in a space with an api_key credential,
                called by a space member with an HS256 JWT through /spaces/{space}/plugins/{slug}
  gateway-redis, gateway-limited, gateway-cached
                a second `gateway serve` (one process, REDIS_URL set, its own database) with three
                routes of the same plugin: no limit, a rate limit never reached (counted in Redis),
                and a response cache that every measured request HITs
  nginx-cache   a third nginx, a reverse proxy with proxy_cache answering from its cache
  bare-aiohttp-2p, gateway-2w, gateway-2w-limited, gateway-2w-cached
                the bare proxy in two processes, and a second node of the Redis-backed gateway
                with GATEWAY_WORKERS=2 on the same three routes
Each is loaded with wrk (2 threads, 8 and 64 connections) in alternating rounds. Then the
gateway's table grows to 10,000 routes, and (--profile) py-spy records where its time goes.
See bench/README.md. Results are written to bench/RESULTS.md; the run ends by printing the ratio
table (full pipeline, limiter and cache hits against the bare proxy, at 1 and 2 workers).
The code is the package bench/harness/; this file only makes sure it runs in the project's venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _in_project_env() -> bool:
    try:
        import asyncpg  # noqa: F401
        import gateway  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    if (not _in_project_env() and VENV_PYTHON.exists()
            and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve()):
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.path.insert(0, str(ROOT))  # bench.harness, and tests.factories for the seed rows
    from bench.harness.cli import main

    sys.exit(main())
