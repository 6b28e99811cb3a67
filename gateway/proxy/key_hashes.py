"""The hashes of every live API key, held in memory by every gateway process.

A credential that looks like an API key is hashed and looked up here: a hash that is not held
is refused (401) without a query, so a stream of made-up `pgw_...` keys costs PostgreSQL
nothing. The set is loaded when PostgreSQL first answers and kept current like the routes: by
the change notifications of `api_keys` (which name the key's id: that key is read again), by a
full reload whenever the change listener (re)connects (it may have missed some), and by a
periodic fingerprint of the table as the safety net, at least every `interval` seconds.

All reads run one after another in one worker task. A notification that arrives while a read is
in flight queues its key again, and the worker reads it once more after the read in flight is
applied, so an older snapshot can never overwrite what a later notification announced.

A key created through this process (db.api_keys' created listener) is known at once as
*provisional*: it is confirmed against PostgreSQL on use until its notification has come back,
as the transaction that created it may still roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any
from uuid import UUID

from cachetools import TTLCache

from db import callers
from db.callers import ApiKeyIdentity, LiveApiKey
from db.errors import DatabaseUnavailable
from db.pool import CONNECTION_ERRORS, Database

log = logging.getLogger("gateway.callers")

SAFETY_INTERVAL_SECONDS = 30.0
PROVISIONAL_SECONDS = 60.0
PROVISIONAL_ENTRIES = 10_000
SETTLE_SECONDS = 1.0  # the longest a lookup waits for notified changes to be applied
RETRY_SECONDS = 1.0


class Verdict(Enum):
    KNOWN = "known"  # a live key: its identity is here
    UNKNOWN = "unknown"  # no such live key: refuse it, no query
    ASK = "ask"  # not decidable from memory (not loaded yet, or created here a moment ago): query


class KeyHashes:
    def __init__(self, db: Database, *, interval: float = SAFETY_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.interval = interval
        self._clock = clock
        self._by_hash: dict[bytes, ApiKeyIdentity] = {}
        self._hash_of: dict[UUID, bytes] = {}
        self._provisional: TTLCache[bytes, ApiKeyIdentity] = TTLCache(PROVISIONAL_ENTRIES, PROVISIONAL_SECONDS)
        self._fingerprint: str | None = None
        self.loaded_at: float | None = None  # wall clock of the last full load
        self.checked_at: float | None = None  # ... and of the last time memory was known current
        self.failing_since: float | None = None  # PostgreSQL has not answered the worker since then
        # Work for the worker: a full reload, a fingerprint check, keys to read again.
        self._full = False
        self._check = False
        self._dirty: set[UUID] = set()
        self._worker: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # no notified change waits to be applied
        self._settled.set()
        self.reads = 0  # queries made, for tests and metrics

    # -- lookups ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.loaded_at is not None

    def __len__(self) -> int:
        return len(self._by_hash)

    def verdict(self, key_hash: bytes) -> tuple[Verdict, ApiKeyIdentity | None]:
        if not self.loaded:
            return Verdict.ASK, None
        identity = self._by_hash.get(key_hash)
        if identity is not None:
            return Verdict.KNOWN, identity
        if key_hash in self._provisional:
            return Verdict.ASK, None
        return Verdict.UNKNOWN, None

    async def lookup(self, key_hash: bytes) -> tuple[Verdict, ApiKeyIdentity | None]:
        """The verdict on a key; an unknown one waits (briefly) for notified changes first, so a
        key created through another node is usable as soon as its notification has arrived.
        A known one does not wait: a revocation is in force once its read is applied (ms)."""
        found = self.verdict(key_hash)
        if found[0] is Verdict.UNKNOWN and not self._settled.is_set():
            await self.settle()
            found = self.verdict(key_hash)
        return found

    async def settle(self, within: float = SETTLE_SECONDS) -> bool:
        """Wait until every change notified so far is applied (or could not be); False on timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(self._settled.wait()), within)
        except TimeoutError:
            return False
        return True

    # -- changes ---------------------------------------------------------------------------

    def created(self, identity: ApiKeyIdentity, key_hash: bytes) -> None:
        """A key this process inserted (db.api_keys' created listener); not committed yet."""
        if key_hash not in self._by_hash:
            self._provisional[key_hash] = identity

    def on_change(self, change: dict[str, Any]) -> None:
        table = change.get("table")
        if table == "api_keys":
            try:
                self._dirty.add(UUID(str(change["id"])))
            except (KeyError, ValueError, TypeError):
                self._full = True
        elif table == "*":
            self._full = True
        else:
            return
        self._settled.clear()
        self._kick()

    # -- the worker ------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._full or self._dirty or self._check:
                if self._full:
                    # Keys notified before this snapshot are in it; those notified while it is
                    # read are queued again and read after it.
                    self._full = self._check = False
                    self._dirty.clear()
                    try:
                        await self._load_all()
                    except DatabaseUnavailable:
                        self._full = True
                        raise
                elif self._dirty:
                    ids, self._dirty = self._dirty, set()
                    try:
                        await self._load_ids(ids)
                    except DatabaseUnavailable:
                        self._dirty |= ids
                        raise
                else:
                    self._check = False
                    fingerprint = await self._read(callers.api_keys_fingerprint)
                    if fingerprint != self._fingerprint:
                        log.warning("API keys changed without a notification reaching this node; reloading")
                        self._full = True
                    else:
                        self.checked_at = self._clock()
                self.failing_since = None
        except DatabaseUnavailable as exc:
            if self.failing_since is None:
                self.failing_since = self._clock()
                log.warning("API key hashes cannot be read (%s); serving the %d known", exc, len(self._by_hash))
        finally:
            # Whatever could not be applied is retried by `run`; lookups stop waiting for it.
            self._settled.set()

    async def _read(self, fn: Any, *args: Any) -> Any:
        self.reads += 1
        try:
            return await fn(self.db.require(), *args)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    def export(self) -> list[list[str]]:
        return [[str(i.id), str(i.space_id), i.role, key_hash.hex()] for key_hash, i in self._by_hash.items()]

    def seed(self, keys: list[list[str]]) -> None:
        """A snapshot's key hashes, until the first load from PostgreSQL replaces them."""
        if self.loaded:
            return
        identities = [(bytes.fromhex(h), ApiKeyIdentity(UUID(i), UUID(s), r)) for i, s, r, h in keys]
        self._by_hash = dict(identities)
        self._hash_of = {identity.id: key_hash for key_hash, identity in identities}
        self.loaded_at = self._clock()
        self._full = True  # read them all from PostgreSQL as soon as it answers

    async def _load_all(self) -> None:
        fingerprint, keys = await self._read(callers.live_api_keys)
        self._by_hash = {key.key_hash: key.identity for key in keys}
        self._hash_of = {key.identity.id: key.key_hash for key in keys}
        for key_hash in [h for h in self._provisional if h in self._by_hash]:
            del self._provisional[key_hash]
        self._fingerprint = fingerprint
        self.loaded_at = self.checked_at = self._clock()
        log.info("API key hashes loaded: %d live keys", len(keys))

    async def _load_ids(self, ids: set[UUID]) -> None:
        keys: list[LiveApiKey] = await self._read(callers.api_keys_by_id, list(ids))
        for key_id in ids:
            old = self._hash_of.pop(key_id, None)
            if old is not None:
                self._by_hash.pop(old, None)
        for key in keys:
            self._by_hash[key.key_hash] = key.identity
            self._hash_of[key.identity.id] = key.key_hash
        for key_hash in [h for h, i in self._provisional.items() if i.id in ids]:
            del self._provisional[key_hash]  # confirmed, or gone (revoked, rolled back)

    async def run(self) -> None:
        """Load once PostgreSQL answers, then check the fingerprint every `interval` seconds and
        retry whatever the worker could not apply."""
        await self.db.ready.wait()
        if not self.loaded:
            self._full = True
        last_check = time.monotonic()
        while True:
            if self._worker is None or self._worker.done():
                if time.monotonic() - last_check >= self.interval:
                    self._check, last_check = True, time.monotonic()
                if self._full or self._dirty or self._check:
                    self._kick()
            if self._worker is not None and not self._worker.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._worker)
            await asyncio.sleep(min(RETRY_SECONDS, self.interval))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    def readiness(self) -> dict[str, object]:
        now = self._clock()
        return {"loaded": self.loaded, "keys": len(self._by_hash),
                "checked_seconds_ago": None if self.checked_at is None else round(now - self.checked_at, 3),
                "failing_for_seconds": None if self.failing_since is None else round(now - self.failing_since, 3)}
