"""The audit log (migrations/20250101001000_audit_log.sql): listing it, and verifying its chains.

Rows are written by the database's triggers only; nothing here inserts. Listing runs in the
caller's transaction, so row-level security keeps a space's rows inside it (and the marketplace's
to platform admins). Verifying crosses every space: `public.audit_verify`, a SECURITY DEFINER
function of `gateway_auditor`, recomputes the chains in one statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db.pagination import IdPageRequest, id_page

_SHOWN = """id, occurred_at, space_id, actor_user_id, actor_api_key_id, request_id, action, table_name,
row_id, changed_fields, old_values, new_values, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash"""


@dataclass(frozen=True, slots=True)
class Filters:
    table: str | None = None
    row_id: UUID | None = None
    actor_user_id: UUID | None = None
    action: str | None = None
    since: datetime | None = None  # occurred_at >= since
    until: datetime | None = None  # occurred_at < until


# Each filter given adds its fixed condition; values are always parameters.
_CONDITIONS = {
    "table": "table_name = ${}",
    "row_id": "row_id = ${}",
    "actor_user_id": "actor_user_id = ${}",
    "action": "action = ${}",
    "since": "occurred_at >= ${}",
    "until": "occurred_at < ${}",
}


def list_statement(space_id: UUID | None, filters: Filters, page: IdPageRequest) -> tuple[str, list[Any]]:
    """Newest first (by id) in one space's chain, or the marketplace's (`space_id` None)."""
    args: list[Any] = []
    if space_id is None:
        where = ["space_id IS NULL"]
    else:
        args.append(space_id)
        where = [f"space_id = ${len(args)}"]
    for name, condition in _CONDITIONS.items():
        value = getattr(filters, name)
        if value is not None:
            args.append(value)
            where.append(condition.format(len(args)))
    if page.before is not None:
        args.append(page.before)
        where.append(f"id < ${len(args)}")
    args.append(page.limit + 1)
    statement = (f"SELECT {_SHOWN} FROM public.audit_log WHERE {' AND '.join(where)} "
                 f"ORDER BY id DESC LIMIT ${len(args)}")
    return statement, args


async def list_entries(conn: asyncpg.Connection, space_id: UUID | None, filters: Filters,
                       page: IdPageRequest) -> dict[str, Any]:
    statement, args = list_statement(space_id, filters, page)
    return id_page([dict(r) for r in await conn.fetch(statement, *args)], page)


@dataclass(frozen=True, slots=True)
class Verdict:
    checked: int        # rows whose hash and link were checked
    chains: int         # chains whose end was compared with their head
    failed_id: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.failed_id is None and self.problem is None


VERIFY = "SELECT checked, chains, failed_id, problem FROM public.audit_verify($1::uuid, $2::boolean)"


async def verify(conn: asyncpg.Connection, *, space_id: UUID | None = None, marketplace: bool = False) -> Verdict:
    """Every chain (or one space's, or the marketplace's) checked in one statement: each row's hash
    against its content, its prev_hash against the row before it, each chain's end against its head."""
    row = await conn.fetchrow(VERIFY, space_id, marketplace)
    return Verdict(int(row["checked"] or 0), int(row["chains"] or 0), row["failed_id"], row["problem"])
