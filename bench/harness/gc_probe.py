"""How long one full garbage collection takes in a process holding the gateway's proxy state.

    python -m bench.harness.gc_probe DSN PLUGIN_SLUG

Loads the gateway's modules (for a comparable heap) and the proxy state's rows from DSN, builds
the state once with PLUGIN_SLUG's /reports/{id} route alone and once with every route, and prints
one JSON line: for each, the routes in the table, the objects the collector tracks and the
median of 5 full collections in ms. Its own process: the benchmark's heap is not the gateway's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

import asyncpg

import gateway.app  # noqa: F401 - the gateway's modules loaded, for a comparable heap
from db import proxy_state
from routing.loader import build_state


Rows = list[dict[str, Any]]


async def load(dsn: str) -> tuple[Rows, Rows, Rows]:
    conn = await asyncpg.connect(dsn)
    try:
        for kind in ("json", "jsonb"):  # as the gateway's pool decodes them (db.pool)
            await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return await proxy_state.load(conn)
    finally:
        await conn.close()


def main() -> None:
    dsn, slug = sys.argv[1], sys.argv[2]
    routes, installations, _assignments = asyncio.run(load(dsn))

    def measure(rows: Rows) -> dict[str, Any]:
        state = build_state(rows, installations)
        gc.collect()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            gc.collect()
            times.append(time.perf_counter() - started)
        result = {"routes": state.table.size, "tracked": len(gc.get_objects()), "full_gc_ms": sorted(times)[2] * 1e3}
        del state
        gc.collect()
        return result

    one = [r for r in routes if r["service_slug"] == slug and r["route_path"] == "/reports/{id}"]
    print(json.dumps([measure(one), measure(routes)]))


if __name__ == "__main__":
    main()
