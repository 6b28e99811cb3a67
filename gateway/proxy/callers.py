"""Users, memberships and API keys as the proxy sees them: cached in memory.

A proxied request in the steady state makes no database query. Entries are dropped when
PostgreSQL says the row changed (NOTIFY, see routing.loader), and all of them when the change
listener reconnects (it may have missed some). Misses are cached too, like Kong's credential
cache, so a stream of bad keys cannot turn into a stream of queries. While PostgreSQL is down
the cached entries keep serving; a miss then answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from cachetools import LRUCache

from db import callers
from db.callers import ApiKeyIdentity
from db.pool import CONNECTION_ERRORS, Database
from db.errors import DatabaseUnavailable

log = logging.getLogger("gateway.callers")

CACHE_ENTRIES = 200_000
LAST_USED_FLUSH_SECONDS = 10.0


class CallerCache:
    def __init__(self, db: Database, size: int = CACHE_ENTRIES) -> None:
        self.db = db
        self.users: LRUCache[UUID, bool] = LRUCache(size)
        self.roles: LRUCache[tuple[UUID, UUID], str | None] = LRUCache(size)
        self.keys: LRUCache[bytes, ApiKeyIdentity | None] = LRUCache(size)
        self._used_keys: set[UUID] = set()

    async def _query(self, fn: Any, *args: Any) -> Any:
        try:
            return await fn(self.db.require(), *args)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def user_exists(self, user_id: UUID) -> bool:
        found = self.users.get(user_id)
        if found is None:
            found = self.users[user_id] = await self._query(callers.user_exists, user_id)
        return found

    async def role(self, space_id: UUID, user_id: UUID) -> str | None:
        key = (space_id, user_id)
        try:
            return self.roles[key]
        except KeyError:
            role = self.roles[key] = await self._query(callers.space_role, space_id, user_id)
            return role

    async def api_key(self, key_hash: bytes) -> ApiKeyIdentity | None:
        try:
            identity = self.keys[key_hash]
        except KeyError:
            identity = self.keys[key_hash] = await self._query(callers.api_key_by_hash, key_hash)
        if identity is not None:
            self._used_keys.add(identity.id)
        return identity

    def on_change(self, change: dict[str, Any]) -> None:
        table = change.get("table")
        if table == "space_members":
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.roles.pop((UUID(change["space_id"]), UUID(change["user_id"])), None)
        elif table == "api_keys":
            self.keys.clear()  # keyed by hash, which the notification does not carry
        elif table == "users":
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.users.pop(UUID(change["id"]), None)
        elif table == "*":
            self.users.clear()
            self.roles.clear()
            self.keys.clear()

    async def flush_last_used(self) -> None:
        """Record API-key use in one UPDATE per interval, not one write per request."""
        if not self._used_keys:
            return
        used, self._used_keys = self._used_keys, set()
        try:
            await callers.touch_api_keys(self.db.require(), list(used), datetime.now(timezone.utc))
        except (DatabaseUnavailable, *CONNECTION_ERRORS):
            self._used_keys |= used  # try again next time

    async def run_flusher(self, interval: float = LAST_USED_FLUSH_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush_last_used()
