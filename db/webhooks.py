"""The webhook outbox as the API reads it, and redelivery (migration 20250101001200).

The app role reads `webhook_deliveries` under row-level security (the service's maintainers and
platform admins see its rows) and writes it only through gateway_webhook_redeliver.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from db.pagination import PageRequest, page

COLUMNS = """
d.id, d.service_id, d.space_id, d.installation_id, d.event, d.occurred_at, d.status, d.attempts,
d.last_status_code, d.last_error, d.last_attempt_at, d.next_attempt_at, d.created_at, d.delivered_at
"""

# Newest first: the cursor is the last item's (created_at, id), the next page what sorts below it.
LIST_DELIVERIES = f"""
SELECT {COLUMNS} FROM public.webhook_deliveries d
WHERE d.service_id = $1 AND ($2::text IS NULL OR d.status = $2)
  AND ($3::timestamptz IS NULL OR (d.created_at, d.id) < ($3, $4))
ORDER BY d.created_at DESC, d.id DESC
LIMIT $5
"""

REDELIVER = f"SELECT {COLUMNS} FROM public.gateway_webhook_redeliver($1, $2) d"


async def list_deliveries(conn: asyncpg.Connection, service_id: UUID, status: str | None,
                          request: PageRequest) -> dict[str, Any]:
    rows = await conn.fetch(LIST_DELIVERIES, service_id, status, request.after_time, request.after_id,
                            request.limit + 1)
    return page([dict(r) for r in rows], request)


async def redeliver(conn: asyncpg.Connection, service_id: UUID, delivery_id: UUID) -> dict[str, Any] | None:
    """Queue the delivery again (due now); None when the service has no such delivery (or the
    caller may not see it)."""
    row = await conn.fetchrow(REDELIVER, service_id, delivery_id)
    return dict(row) if row is not None else None
