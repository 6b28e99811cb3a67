#!/usr/bin/env python3
"""How long `gateway audit verify` takes over a million audit rows (issue 10, item 6).

    .venv/bin/python bench/audit_verify.py [--rows 1000000] [--spaces 100] [--runs 3] [--keep]

On DATABASE_URL's server (default postgresql://postgres@127.0.0.1:5432/postgres; a superuser) it
creates a database of this run only, `gateway_audit_bench_<pid>`, migrates it with
db.migrate.migrate (what `gateway migrate` runs) and drops it at the end (also on errors and
Ctrl-C; --keep leaves it).

Rows: --rows audit rows over --spaces space chains and the marketplace chain (every 101st row),
written in SQL with generate_series through the chain function `public.audit_append` (what the
audit trigger calls once it has turned the changed row into old/new values: the same chain lock,
id, prev_hash and hash), in transactions of 10,000 rows, by two connections on disjoint chains.
Each row looks like an installation's update (a dozen fields of old and new values). Then VACUUM
ANALYZE, as autovacuum would have done on a real log.

Timed: the real command, `python -m gateway.cli audit verify` (a process of its own, logging in as
GATEWAY_MIGRATE_DATABASE_URL), --runs times over every chain, once with --space (one chain), and
once after one row in the middle was changed behind the triggers' back (exit 1 naming it). Printed:
rows, seconds per run, and the median.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import asyncpg  # noqa: E402
from yarl import URL  # noqa: E402

from db.migrate import migrate  # noqa: E402

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 10_000

# One batch: rows `first`..`first + count - 1`; row g goes to chain g % (spaces + 1) (0: the
# marketplace). A connection writes only the chains of its own residue, so the two never wait.
GENERATE = """
SELECT count(public.audit_append(
    CASE WHEN g % ($3 + 1) = 0 THEN NULL
         ELSE ('00000000-0000-4000-8000-' || lpad((g % ($3 + 1))::text, 12, '0'))::uuid END,
    'service_installations', ('10000000-0000-4000-8000-' || lpad((g % 100000)::text, 12, '0'))::uuid, 'update',
    ARRAY['config', 'status'],
    jsonb_build_object('id', g, 'config', jsonb_build_object('tier', 'silver', 'region', 'eu-west-1'),
                       'status', 'active', 'space_id', g % ($3 + 1), 'deleted_at', NULL,
                       'service_id', '20000000-0000-4000-8000-000000000001', 'credentials',
                       jsonb_build_array('client_id', 'client_secret'), 'permissions', '{"min_role": "member"}'::jsonb,
                       'installed_at', '2025-01-01T00:00:00+00:00', 'installed_by', NULL),
    jsonb_build_object('id', g, 'config', jsonb_build_object('tier', 'gold', 'region', 'eu-west-1'),
                       'status', 'inactive', 'space_id', g % ($3 + 1), 'deleted_at', NULL,
                       'service_id', '20000000-0000-4000-8000-000000000001', 'credentials',
                       jsonb_build_array('client_id', 'client_secret'), 'permissions', '{"min_role": "member"}'::jsonb,
                       'installed_at', '2025-01-01T00:00:00+00:00', 'installed_by', NULL)))
FROM generate_series($1::bigint, $1::bigint + $2 - 1) AS g
WHERE (g % ($3 + 1)) % 2 = $4
"""


def with_database(dsn: str, name: str) -> str:
    return str(URL(dsn).with_path("/" + name))


async def generate(dsn: str, rows: int, spaces: int) -> float:
    started = time.monotonic()

    async def writer(residue: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for first in range(1, rows + 1, BATCH):
                async with conn.transaction():
                    await conn.fetchval(GENERATE, first, min(BATCH, rows - first + 1), spaces, residue)
        finally:
            await conn.close()

    await asyncio.gather(writer(0), writer(1))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) public.audit_log")
        await conn.execute("VACUUM (ANALYZE) public.audit_chain_heads")
        assert await conn.fetchval("SELECT count(*) FROM public.audit_verify()") == 1
    finally:
        await conn.close()
    return time.monotonic() - started


def run_verify(dsn: str, *args: str) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_MIGRATE_DATABASE_URL": dsn, "DATABASE_URL": dsn}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return done.returncode, (done.stdout + done.stderr).strip(), time.monotonic() - started


async def tamper(dsn: str) -> int:
    """Change one row in the middle as a superuser can: the guard off, the row changed, on again."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            row = await conn.fetchval("SELECT id FROM public.audit_log ORDER BY id OFFSET "
                                      "(SELECT count(*) / 2 FROM public.audit_log) LIMIT 1")
            await conn.execute("ALTER TABLE public.audit_log DISABLE TRIGGER trg_audit_log_append_only")
            await conn.execute("UPDATE public.audit_log SET request_id = 'forged' WHERE id = $1", row)
            await conn.execute("ALTER TABLE public.audit_log ENABLE TRIGGER trg_audit_log_append_only")
        return int(row)
    finally:
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--spaces", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL") or DEFAULT_DSN
    name = f"gateway_audit_bench_{os.getpid()}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(server, name)
    try:
        await migrate(dsn)
        print(f"database {name}: writing {args.rows} audit rows over {args.spaces} spaces and the marketplace ...",
              flush=True)
        seconds = await generate(dsn, args.rows, args.spaces)
        print(f"  written in {seconds:.1f} s ({args.rows / seconds:.0f} rows/s through audit_append, 2 writers)")
        server_version = await admin.fetchval("SHOW server_version")
        print(f"PostgreSQL {server_version}, {os.cpu_count()} CPUs")
        times = []
        for run in range(1, args.runs + 1):
            code, out, took = run_verify(dsn)
            assert code == 0, out
            times.append(took)
            print(f"  verify run {run}: {took:.2f} s  | {out}")
        print(f"gateway audit verify over {args.rows} rows: median {statistics.median(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)}; process start and connection included)")
        space = uuid.UUID("00000000-0000-4000-8000-000000000001")
        code, out, took = run_verify(dsn, "--space", str(space))
        assert code == 0, out
        print(f"  one space (--space): {took:.2f} s  | {out}")
        row = await tamper(dsn)
        code, out, took = run_verify(dsn)
        assert code == 1 and f"row {row}:" in out, out
        print(f"  after changing row {row} behind the triggers: exit {code} in {took:.2f} s  | {out}")
        return 0
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
