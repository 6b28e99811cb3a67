"""`last_used` of management assignments, to the minute (gateway/proxy/management.py): each
request remembers its assignment, a background task writes them in batches, at most once a
minute per assignment (bookkeeping, through a SECURITY DEFINER function: across spaces)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Final
from uuid import UUID

from db.errors import DatabaseUnavailable
from db.pool import CONNECTION_ERRORS, Database

TOUCH_EVERY_SECONDS: Final = 60.0
FLUSH_SECONDS: Final = 10.0
MAX_REMEMBERED: Final = 100_000
TOUCH: Final = "SELECT public.gateway_touch_assignments($1::uuid[], $2)"  # migration 20250101001300


class AssignmentTouches:
    """`last_used` of assignments, to the minute: remembered per request, written in batches."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._used: set[UUID] = set()
        self._written: dict[UUID, float] = {}

    def used(self, assignment_id: UUID) -> None:
        if time.monotonic() - self._written.get(assignment_id, -TOUCH_EVERY_SECONDS) >= TOUCH_EVERY_SECONDS:
            self._used.add(assignment_id)

    async def flush(self) -> None:
        if not self._used:
            return
        batch, self._used = self._used, set()
        try:
            await self.db.require().execute(TOUCH, list(batch), datetime.now(timezone.utc))
        except (DatabaseUnavailable, *CONNECTION_ERRORS):
            self._used |= batch
            return
        now = time.monotonic()
        for assignment_id in batch:
            self._written[assignment_id] = now
        if len(self._written) > MAX_REMEMBERED:  # bounded: forget the oldest half
            for old in sorted(self._written, key=self._written.__getitem__)[:MAX_REMEMBERED // 2]:
                del self._written[old]

    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()
