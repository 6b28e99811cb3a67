"""`gateway audit verify [--space ID | --marketplace]`: recompute the audit log's hash chains.

It crosses every space, so it logs in as GATEWAY_MIGRATE_DATABASE_URL (the tables' owner, a member
of `gateway_auditor`; DATABASE_URL when unset) and reads through `public.audit_verify`, which runs
as `gateway_auditor` (forced row-level security holds the owner too). Exit 0 with the number of
rows checked; 1 naming the first row (by id) whose hash or link does not match, or the chain whose
end does not match its head; 2 when it cannot run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from uuid import UUID

import asyncpg

from db import audit
from gateway.settings import Settings


async def run_verify(dsn: str, *, space_id: UUID | None = None, marketplace: bool = False) -> audit.Verdict:
    conn = await asyncpg.connect(dsn)
    try:
        return await audit.verify(conn, space_id=space_id, marketplace=marketplace)
    finally:
        await conn.close()


def verify(settings: Settings, *, space_id: UUID | None = None, marketplace: bool = False) -> int:
    started = time.monotonic()
    try:
        verdict = asyncio.run(run_verify(settings.migrate_database_url, space_id=space_id, marketplace=marketplace))
    except asyncpg.UndefinedFunctionError:
        print("gateway: the audit log is not there yet: run `gateway migrate` first", file=sys.stderr)
        return 2
    except asyncpg.InsufficientPrivilegeError:
        print("gateway: this login may not verify the audit log: use GATEWAY_MIGRATE_DATABASE_URL (the "
              "tables' owner, a member of gateway_auditor)", file=sys.stderr)
        return 2
    seconds = time.monotonic() - started
    scope = f"space {space_id}" if space_id else "the marketplace" if marketplace else "every chain"
    if verdict.ok:
        print(f"audit log verified: {verdict.checked} rows checked in {verdict.chains} chains ({scope}), "
              f"{seconds:.2f} s")
        return 0
    print(f"audit log verification FAILED: {verdict.problem} ({verdict.checked} rows checked, {scope})")
    return 1
