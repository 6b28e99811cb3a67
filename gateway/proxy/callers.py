"""Users, memberships and API keys as the proxy sees them: held in memory.

A proxied request in the steady state makes no database query:
- API keys: the hashes of every live key are held by `key_hashes` (gateway.proxy.key_hashes); a
  key whose hash is not held is refused without a query.
- Users and memberships are read on first use (misses are cached too: a non-member asking again
  costs nothing) and then kept current three ways. A change notification (routing.loader's
  LISTEN) drops the entry, and all of them go when the change listener reconnects (it may have
  missed some). A read in flight when its entry is dropped never stores its result: it may have
  read the row before the change. And GATEWAY_CALLER_CACHE_TTL bounds a missed notification:
  while PostgreSQL answers, no entry is used longer than `ttl` seconds after it was read. The
  background refresher reads entries again, in batches, once they are REFRESH_AT of the TTL
  old, so requests never wait for it; a request that finds an entry past its TTL anyway (the
  refresher fell behind) reads it itself, waiting at most FALLBACK_WAIT_SECONDS.
While PostgreSQL is unreachable the entries are used past their TTL (the proxy keeps serving);
`stale_since` says since when, and /readyz reports it. A miss then answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID

from cachetools import LRUCache

from db import api_keys as api_key_rows
from db import callers
from db.callers import ApiKeyIdentity
from db.errors import DatabaseUnavailable
from db.pool import CONNECTION_ERRORS, Database
from gateway.auth_failures import AuthFailures
from gateway.proxy.key_hashes import SAFETY_INTERVAL_SECONDS, KeyHashes, Verdict
from gateway.settings import Settings

log = logging.getLogger("gateway.callers")

CACHE_ENTRIES = 200_000
LAST_USED_FLUSH_SECONDS = 10.0
DEFAULT_TTL_SECONDS = 60.0
REFRESH_AT = 0.8  # of the TTL: when the background refresher reads an entry again
REFRESH_BATCH = 1000
FALLBACK_WAIT_SECONDS = 1.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    read_at: float  # monotonic: when the read that produced it was sent


class _Read:
    """One read in flight; `stale` once its key was invalidated meanwhile (its result is dropped)."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


class _Entries(LRUCache[K, _Entry[V]]):
    def __init__(self, maxsize: int, evicted: Callable[[K], None]) -> None:
        super().__init__(maxsize)
        self._evicted = evicted

    def popitem(self) -> tuple[K, _Entry[V]]:
        key, value = super().popitem()
        self._evicted(key)
        return key, value


class TtlEntries(Generic[K, V]):
    """Entries by key, most recently used kept (LRU), oldest read first in `_by_age`.

    Every read registers a `_Read` under its key first; `invalidate` marks the reads in flight
    stale, so a result read before a change is never stored after the change was announced.
    """

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: _Entries[K, V] = _Entries(size, self._forget_age)
        self._by_age: OrderedDict[K, None] = OrderedDict()
        self._reads: dict[K, set[_Read]] = {}
        self.inflight: dict[K, asyncio.Task[V]] = {}  # request-path reads, one per key

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> _Entry[V] | None:
        return self._entries.get(key)

    def begin(self, key: K) -> _Read:
        read = _Read()
        self._reads.setdefault(key, set()).add(read)
        return read

    def end(self, key: K, read: _Read) -> None:
        """End `read` without storing anything (it failed)."""
        reads = self._reads.get(key)
        if reads is not None:
            reads.discard(read)
            if not reads:
                del self._reads[key]

    def store(self, key: K, read: _Read, value: V, read_at: float) -> bool:
        """End `read` and store its value, unless its key was invalidated since it began."""
        self.end(key, read)
        if read.stale:
            return False
        self._entries[key] = _Entry(value, read_at)
        self._by_age[key] = None
        self._by_age.move_to_end(key)
        return True

    def invalidate(self, key: K) -> None:
        for read in self._reads.pop(key, ()):
            read.stale = True
        self.inflight.pop(key, None)  # later requests start a read of their own
        self._entries.pop(key, None)
        self._by_age.pop(key, None)

    def clear(self) -> None:
        for reads in self._reads.values():
            for read in reads:
                read.stale = True
        self._reads.clear()
        self.inflight.clear()
        self._entries.clear()
        self._by_age.clear()

    def _forget_age(self, key: K) -> None:
        self._by_age.pop(key, None)

    def due(self, read_before: float, limit: int) -> list[K]:
        """Up to `limit` keys read before `read_before` (oldest first) that no read is refreshing."""
        found: list[K] = []
        for key in self._by_age:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.read_at > read_before or len(found) >= limit:
                break
            if key not in self._reads:
                found.append(key)
        return found

    def items(self) -> list[tuple[K, V]]:
        return [(key, entry.value) for key, entry in self._entries.items()]

    def seed(self, key: K, value: V, read_at: float) -> None:
        """Hold a value that was not read now (a snapshot's): the refresher reads it again first."""
        self.store(key, self.begin(key), value, read_at)

    def oldest_read_at(self) -> float | None:
        for key in self._by_age:
            entry = self._entries.get(key)
            if entry is not None:
                return entry.read_at
        return None


class CallerCache:
    def __init__(self, db: Database, size: int = CACHE_ENTRIES, *, ttl: float = DEFAULT_TTL_SECONDS,
                 failures: AuthFailures | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl = ttl
        self._clock = clock
        self.users: TtlEntries[UUID, bool] = TtlEntries(size, clock)
        self.roles: TtlEntries[tuple[UUID, UUID], str | None] = TtlEntries(size, clock)
        # The key set is checked against PostgreSQL at least as often as the TTL asks.
        self.key_hashes = KeyHashes(db, interval=max(0.1, min(SAFETY_INTERVAL_SECONDS, ttl)))
        self.failures = AuthFailures(60) if failures is None else failures
        self._used_keys: set[UUID] = set()
        self.database_down_since: float | None = None  # monotonic; set by a read that could not reach it
        # For tests and metrics: reads made on a request's path, and by the background refresher.
        self.request_reads = 0
        self.background_reads = 0
        self.changes = 0

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> CallerCache:
        return cls(db, ttl=settings.caller_cache_ttl, failures=AuthFailures(settings.auth_failures_per_minute))

    # -- the last-known-good snapshot (gateway/snapshot.py) -------------------------------

    def export(self) -> dict[str, list[list[Any]]]:
        return {"users": [[str(user), exists] for user, exists in self.users.items()],
                "roles": [[str(space), str(user), role] for (space, user), role in self.roles.items()],
                "api_keys": self.key_hashes.export()}

    def seed(self, snapshot: dict[str, Any]) -> None:
        """Hold a snapshot's callers as read a TTL ago: used while PostgreSQL is away (past the
        TTL, as /readyz says), read again first when it answers."""
        read_at = self._clock() - self.ttl
        for user, exists in snapshot.get("users", []):
            self.users.seed(UUID(user), bool(exists), read_at)
        for space, user, role in snapshot.get("roles", []):
            self.roles.seed((UUID(space), UUID(user)), role, read_at)
        self.key_hashes.seed(snapshot.get("api_keys", []))

    # -- lookups (the request path) --------------------------------------------------------

    async def user_exists(self, user_id: UUID) -> bool:
        return await self._lookup(self.users, user_id, callers.user_exists, user_id)

    async def role(self, space_id: UUID, user_id: UUID) -> str | None:
        return await self._lookup(self.roles, (space_id, user_id), callers.space_role, space_id, user_id)

    async def api_key(self, key_hash: bytes) -> ApiKeyIdentity | None:
        verdict, identity = await self.key_hashes.lookup(key_hash)
        if verdict is Verdict.ASK:  # not loaded yet, or created here a moment ago: PostgreSQL decides
            self.request_reads += 1
            identity = await self._query(callers.api_key_by_hash, key_hash)
        if identity is not None:
            self._used_keys.add(identity.id)
        return identity

    async def _lookup(self, entries: TtlEntries[K, V], key: K, fn: Callable[..., Awaitable[V]], *args: Any) -> V:
        entry = entries.get(key)
        if entry is not None and (self._clock() - entry.read_at < self.ttl or self.database_down_since is not None):
            return entry.value  # fresh, or past its TTL while PostgreSQL is unreachable
        task = entries.inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._read_one(entries, key, fn, *args))
            entries.inflight[key] = task
            task.add_done_callback(lambda done: _read_done(entries, key, done))
        if entry is None:
            return await asyncio.shield(task)  # a miss: nothing to answer with until it is read
        # Past its TTL while PostgreSQL answered: the refresher fell behind. Read it here, but a
        # PostgreSQL that does not answer in time is treated as unreachable.
        try:
            return await asyncio.wait_for(asyncio.shield(task), FALLBACK_WAIT_SECONDS)
        except (DatabaseUnavailable, TimeoutError):
            return entry.value

    async def _read_one(self, entries: TtlEntries[K, V], key: K, fn: Callable[..., Awaitable[V]], *args: Any) -> V:
        read = entries.begin(key)
        started = self._clock()
        self.request_reads += 1
        try:
            value = await self._query(fn, *args)
        except BaseException:
            entries.end(key, read)
            raise
        entries.store(key, read, value, started)
        return value

    async def _query(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        try:
            result = await fn(self.db.require(), *args)
        except CONNECTION_ERRORS as exc:
            self._unreachable(exc)
            raise DatabaseUnavailable(type(exc).__name__) from exc
        except DatabaseUnavailable as exc:
            self._unreachable(exc)
            raise
        if self.database_down_since is not None:
            log.info("caller cache: PostgreSQL answers again; entries are refreshed")
            self.database_down_since = None
        return result

    def _unreachable(self, exc: BaseException) -> None:
        if self.database_down_since is None:
            self.database_down_since = self._clock()
            log.warning("caller cache: PostgreSQL unreachable (%s); serving entries past their TTL",
                        type(exc).__name__)

    # -- the background refresher ----------------------------------------------------------

    @property
    def tick(self) -> float:
        return min(max(self.ttl * 0.05, 0.01), 1.0)

    async def refresh_due(self) -> int:
        """Read again, in batches, every entry REFRESH_AT of the TTL old; returns how many."""
        refreshed = 0
        batches: Sequence[tuple[TtlEntries[Any, Any], Callable[..., Awaitable[dict[Any, Any]]], Any]] = (
            (self.users, callers.users_exist, False),
            (self.roles, callers.space_roles, None),
        )
        for entries, fn, absent in batches:
            while True:
                keys = entries.due(self._clock() - self.ttl * REFRESH_AT, REFRESH_BATCH)
                if not keys:
                    break
                reads = [(key, entries.begin(key)) for key in keys]
                started = self._clock()
                try:
                    self.background_reads += 1
                    values = await self._query(fn, keys)
                except BaseException:
                    for key, read in reads:
                        entries.end(key, read)
                    raise
                for key, read in reads:
                    entries.store(key, read, values.get(key, absent), started)
                refreshed += len(keys)
        return refreshed

    async def run_refresher(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.refresh_due()
            except DatabaseUnavailable:
                await asyncio.sleep(min(1.0, self.ttl))  # tried again, entries kept meanwhile
            except Exception:  # the refresher must outlive a bad batch
                log.exception("caller cache refresh failed")

    @property
    def stale_since(self) -> float | None:
        """Wall-clock time since which some entry is used past its TTL (PostgreSQL unreachable,
        or the refresher behind); None while every entry is within it."""
        oldest = min((t for t in (self.users.oldest_read_at(), self.roles.oldest_read_at()) if t is not None),
                     default=None)
        if oldest is None:
            return None
        expired_for = self._clock() - (oldest + self.ttl)
        return None if expired_for <= 0 else time.time() - expired_for

    @property
    def serving_past_ttl(self) -> bool:
        return self.stale_since is not None

    def readiness(self) -> dict[str, object]:
        """For /readyz: what the cache holds and whether it is used past its TTL."""
        stale_since = self.stale_since
        return {
            "ttl_seconds": self.ttl,
            "entries": len(self.users) + len(self.roles),
            "serving_past_ttl": stale_since is not None,
            "past_ttl_for_seconds": None if stale_since is None else round(time.time() - stale_since, 3),
            "api_keys": self.key_hashes.readiness(),
        }

    # -- changes ---------------------------------------------------------------------------

    def on_change(self, change: dict[str, Any]) -> None:
        self.changes += 1
        table = change.get("table")
        if table == "space_members":
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.roles.invalidate((UUID(change["space_id"]), UUID(change["user_id"])))
        elif table == "users":
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.users.invalidate(UUID(change["id"]))
        elif table == "*":
            self.users.clear()
            self.roles.clear()
        self.key_hashes.on_change(change)

    # -- last use of API keys --------------------------------------------------------------

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

    async def run(self) -> None:
        """Everything the cache does in the background, until cancelled."""
        api_key_rows.add_created_listener(self.key_hashes.created)
        tasks = [asyncio.create_task(self.run_flusher()), asyncio.create_task(self.run_refresher()),
                 asyncio.create_task(self.key_hashes.run())]
        try:
            await asyncio.gather(*tasks)
        finally:
            api_key_rows.remove_created_listener(self.key_hashes.created)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.key_hashes.close()


def _read_done(entries: TtlEntries[Any, Any], key: Any, task: asyncio.Task[Any]) -> None:
    if entries.inflight.get(key) is task:
        del entries.inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved here, so a failure nobody awaited is not reported twice
