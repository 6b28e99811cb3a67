"""The response cache: storage and coordination only (the pipeline decides HIT/MISS/BYPASS).

L1 is an in-process LRU bounded in bytes, in which no space holds more than a quarter
(GATEWAY_CACHE_MEMORY_BYTES / 4): a space past its quarter evicts its own least recently used
entries, never another space's. L2 is Redis, shared by every node: the cache's own Redis
(GATEWAY_CACHE_REDIS_URL, default REDIS_URL), because rate-limit counters carry expiries and no
eviction policy of one shared Redis suits both. Without Redis (not configured, failing, paused)
the cache is L1 only: a failed read is a miss, a failed write is dropped, and RedisLink has
already counted the failure (style.md §8).

Concurrent misses for one key are coalesced by `flight()`: on this node with a per-key lock, and
across nodes with a short Redis lock (`pgw:cl:<key>`) whose losers poll for the winner's entry.
Which node holds such a lock is this node's own business first: a lock whose release failed
(Redis paused or gone) is remembered and released on a later miss, and this node never waits for
a lock it took itself.

On a Redis Cluster every operation but two touches one key. Those two are split by slot: the
release of many locks (one script per slot, the keys of one script sharing its slot, all in one
non-transactional pipeline that redis-py splits by node) and a purge (SCAN on every primary;
redis-py's UNLINK of many keys is one command per slot).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from multidict import CIMultiDict
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.proxy.headers import downstream_response_headers
from gateway.redis_link import Client, RedisLink, RedisUnavailable
from gateway.settings import Settings
from routing.table import Route

__all__ = ["CachedResponse", "Flight", "MemoryCache", "ResponseCache", "cache_key", "cacheable", "space_of"]

CACHEABLE_STATUSES = frozenset({200, 301, 404})
ENTRY_PREFIX = "pgw:c:"
LOCK_PREFIX = "pgw:cl:"
LOCK_MS = 5000              # the cross-node lock outlives a normal upstream call, not a stuck one
POLL_SECONDS = 0.02         # how often a node waiting on another node's lock looks for its entry
ENTRY_OVERHEAD = 256        # bytes charged per L1 entry on top of key, body and headers (objects, LRU links)
SPACE_SHARE = 4             # no space holds more than 1/SPACE_SHARE of L1 (contract: a quarter)
_HEADER_LEN = struct.Struct(">I")
# Delete the lock only if it is still ours: after LOCK_MS another node may hold it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# The same for many locks at once (KEYS[i] with token ARGV[i]): the locks whose release failed.
_RELEASE_MANY = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then released = released + redis.call('del', key) end
end
return released
"""
RELEASES_PER_CALL = 256     # stale locks released per retry (one Redis call)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # wall clock (the cache's clock), so every node computes the same Age
    ttl: int
    stale: int = 0  # seconds past the TTL it is kept, to be served only when the upstream fails
    # `headers` through this node's response filter, once per entry rather than once per HIT: an
    # entry in the shared cache may have been stored by a node whose filter was narrower (an
    # older release), and a HIT must never return more than a MISS.
    returned: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "returned", tuple(downstream_response_headers(CIMultiDict(self.headers)).items()))

    @property
    def expires_at(self) -> float:
        return self.stored_at + self.ttl

    @property
    def kept_until(self) -> float:
        return self.expires_at + self.stale

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def age(self, now: float) -> int:
        """The `Age` header's value: whole seconds since the upstream answered."""
        return max(0, int(now - self.stored_at))

    def to_bytes(self) -> bytes:
        """A length-prefixed orjson header, then the raw body: no pickle, no base64."""
        head = orjson.dumps([self.status, self.headers, self.stored_at, self.ttl, self.stale])
        return _HEADER_LEN.pack(len(head)) + head + self.body

    @classmethod
    def from_bytes(cls, blob: bytes) -> CachedResponse:
        """Raises ValueError on anything this module did not write."""
        try:
            (size,) = _HEADER_LEN.unpack_from(blob)
            status, headers, stored_at, ttl, *rest = orjson.loads(blob[4:4 + size])
            stale = int(rest[0]) if rest else 0  # entries of older nodes have no stale window
            pairs = tuple((str(name), str(value)) for name, value in headers)
            return cls(int(status), pairs, bytes(blob[4 + size:]), float(stored_at), int(ttl), stale)
        except (struct.error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError("not a cached response") from exc


class Flight:
    """What `ResponseCache.flight` tells its entrant.

    leader=True: nobody fetched this key since your miss; fetch it (and `put` it if cacheable).
    leader=False: someone else fetched meanwhile; `get()` again, and only on a miss fetch it
    yourself (while you are inside the context you are the only one on this node doing so).

    If your fetch fails in a way every caller waiting for it would meet as well (the upstream is
    down, hanging or refused), call `share_failure` before raising: see `ResponseCache.flight`.
    """

    __slots__ = ("_failure", "leader")

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self._failure: Callable[[], BaseException] | None = None

    def share_failure(self, make: Callable[[], BaseException]) -> None:
        """The callers waiting for this fetch raise `make()` (one fresh exception each) instead
        of fetching in turn. Ignored from an entrant that went on without the lock."""
        self._failure = make

    def __repr__(self) -> str:
        return f"Flight(leader={self.leader})"


def cache_key(*, space_id: UUID | str, caller: str | None, route: Route,
              installation_id: UUID | str | None, installation_version: str, method: str,
              path: str, raw_query: str, accept: str, accept_encoding: str,
              instance_service_id: UUID | str | None = None) -> str:
    """The one place a cache key is built: `<service id>:<space id>:<digest>`. Route and
    installation versions are part of the digest, so a changed route or installation never serves
    an old answer (its entries just expire). The service leads so that a purge can match a
    prefix; the space follows so that L1 can hold each space to its share."""
    if route.options.get("cache_scope") == "space":
        caller = None  # the route shares its answers across the space
    # str(): ids may be asyncpg's own UUID type, which orjson does not know.
    parts = (str(space_id), caller, str(route.id), route.version, str(installation_id), installation_version,
             method, path, raw_query, accept, accept_encoding,
             str(instance_service_id) if instance_service_id else None)  # management calls
    # A JSON array keeps the fields apart: no separator inside a value can forge another key.
    digest = hashlib.sha256(orjson.dumps(parts)).hexdigest()
    return f"{route.service_id}:{space_id}:{digest}"


def space_of(key: str) -> str:
    """The space a key (from `cache_key`) belongs to; "" for a key built some other way."""
    parts = key.split(":", 2)
    return parts[1] if len(parts) == 3 else ""


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:  # multidict: case-insensitive, repeated headers kept
        return list(getall(name, []))
    return [value for key, value in headers.items() if key.lower() == name]


KEYED_VARY = frozenset({"accept", "accept-encoding", ""})


def cacheable(status: int, headers: Mapping[str, str], size: int | None, max_body: int) -> bool:
    """Whether an upstream answer may be stored (contract, "Response cache"). size None means
    unknown yet (chunked): the reader stops storing once the body passes max_body."""
    if status not in CACHEABLE_STATUSES or _header_values(headers, "set-cookie"):
        return False
    if size is not None and size > max_body:
        return False
    for value in _header_values(headers, "cache-control"):
        for directive in value.split(","):
            if directive.split("=", 1)[0].strip().lower() in ("no-store", "private"):
                return False
    # The key covers Accept and Accept-Encoding only: an answer that varies on anything else
    # (Vary: Accept-Language, Vary: *) could be served to a request it does not fit.
    for value in _header_values(headers, "vary"):
        if {v.strip().lower() for v in value.split(",")} - KEYED_VARY:
            return False
    return True


def _entry_size(key: str, response: CachedResponse) -> int:
    # `returned` holds the same strings as `headers` (the filter drops pairs, never copies them).
    return (len(key) + len(response.body) + sum(len(n) + len(v) for n, v in response.headers)
            + ENTRY_OVERHEAD)


class _Space:
    __slots__ = ("order", "size")

    def __init__(self) -> None:
        self.order: OrderedDict[str, None] = OrderedDict()  # this space's keys, least recent first
        self.size = 0


class MemoryCache:
    """L1: an LRU bounded in bytes (`max_bytes`), in which no space holds more than `space_bytes`.

    An insert that would take its space past `space_bytes` first evicts that space's own least
    recently used entries; only what is still missing then comes off the whole cache's least
    recently used end. One space filling the cache therefore never pushes out another space's
    entries: it holds at most its share, the rest stays for everyone else.
    """

    def __init__(self, max_bytes: int, space_bytes: int) -> None:
        self.max_bytes = max(max_bytes, 1)
        self.space_bytes = max(min(space_bytes, self.max_bytes), 1)
        self.size = 0
        self._entries: OrderedDict[str, tuple[CachedResponse, int]] = OrderedDict()
        self._spaces: dict[str, _Space] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def space_size(self, space: str) -> int:
        """Bytes charged to a space now."""
        found = self._spaces.get(space)
        return found.size if found is not None else 0

    def get(self, key: str) -> CachedResponse | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        self._spaces[space_of(key)].order.move_to_end(key)
        return found[0]

    def put(self, key: str, response: CachedResponse) -> bool:
        """Store (or replace) an entry; False when it is larger than a space's share."""
        self.pop(key)
        size = _entry_size(key, response)
        if size > self.space_bytes:
            return False
        space_id = space_of(key)
        space = self._spaces.get(space_id)
        while space is not None and space.size + size > self.space_bytes:
            self.pop(next(iter(space.order)))  # the space's own least recently used
            space = self._spaces.get(space_id)  # gone once its last entry is
        while self.size + size > self.max_bytes:
            self.pop(next(iter(self._entries)))
        space = self._spaces.setdefault(space_id, _Space())
        self._entries[key] = (response, size)
        space.order[key] = None
        space.size += size
        self.size += size
        return True

    def pop(self, key: str) -> CachedResponse | None:
        found = self._entries.pop(key, None)
        if found is None:
            return None
        response, size = found
        space_id = space_of(key)
        space = self._spaces[space_id]
        del space.order[key]
        space.size -= size
        self.size -= size
        if not space.order:
            del self._spaces[space_id]  # no empty records of spaces seen once
        return response


class _Slot:
    """One key's flight on this node; lives while anyone is inside or waiting."""

    __slots__ = ("entered", "failed_through", "failure", "filled", "lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
        self.filled = False  # an entry was stored (or seen) during this flight
        self.entered = 0  # entrants so far: each one's number says who was waiting for what
        # The last shared failure, and the number of the last entrant that was waiting for it:
        # entrants up to that number raise it, later ones fetch normally.
        self.failure: Callable[[], BaseException] | None = None
        self.failed_through = 0


class ResponseCache:
    def __init__(self, link: RedisLink, *, memory_bytes: int, max_body_bytes: int,
                 clock: Callable[[], float] = time.time, flight_timeout: float = 30.0) -> None:
        self._link = link
        self.clock = clock  # the pipeline stamps stored_at and computes Age with this clock too
        self.max_body_bytes = max_body_bytes
        self.flight_timeout = flight_timeout
        self._l1 = MemoryCache(memory_bytes, memory_bytes // SPACE_SHARE)
        self._slots: dict[str, _Slot] = {}
        # Cross-node locks this node took and could not release (key → token, when it expires at
        # the latest, monotonic): released on a later miss, never waited for.
        self._unreleased: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseCache:
        """The cache with its own Redis link: GATEWAY_CACHE_REDIS_URL, else REDIS_URL (a Settings
        built in code may leave cache_redis_url empty). Close it with `close()`."""
        link = RedisLink(settings.cache_redis_url or settings.redis_url, settings.redis_timeout)
        return cls(link, memory_bytes=settings.cache_memory_bytes,
                   max_body_bytes=settings.cache_max_body_bytes)

    @property
    def link(self) -> RedisLink:
        """The cache's Redis (L2)."""
        return self._link

    async def close(self) -> None:
        await self._link.close()

    # -- storage ------------------------------------------------------------------------------

    def _get_local(self, key: str) -> CachedResponse | None:
        entry = self._l1.get(key)
        if entry is not None and entry.kept_until <= self.clock():
            self._l1.pop(key)
            return None
        return entry

    def _put_local(self, key: str, response: CachedResponse) -> bool:
        return self._l1.put(key, response)  # False: larger than a space's share, Redis only

    async def get(self, key: str) -> CachedResponse | None:
        """The entry while it is kept: fresh, or in its stale window (`fresh()` tells)."""
        entry = self._get_local(key)
        if entry is not None or not self._link.configured:
            return entry
        try:
            blob = await self._link.call(lambda r: r.get(ENTRY_PREFIX + key))
        except RedisUnavailable:
            return None
        if not isinstance(blob, bytes):  # None: not kept (the client never decodes to str)
            return None
        try:
            entry = CachedResponse.from_bytes(blob)
        except ValueError:
            return None
        if entry.kept_until <= self.clock():
            return None
        self._put_local(key, entry)  # same stored_at and ttl: L1 keeps only the remaining time
        return entry

    async def put(self, key: str, response: CachedResponse) -> None:
        remaining_ms = int((response.kept_until - self.clock()) * 1000)
        if remaining_ms <= 0 or len(response.body) > self.max_body_bytes:
            return
        stored = self._put_local(key, response)
        if self._link.configured:
            blob = response.to_bytes()
            try:
                await self._link.call(lambda r: r.set(ENTRY_PREFIX + key, blob, px=remaining_ms))
                stored = True
            except RedisUnavailable:
                pass  # counted by RedisLink; L1 still serves this node
        slot = self._slots.get(key)
        if slot is not None and stored:
            slot.filled = True

    def drop_local_service(self, service_id: UUID | str) -> int:
        """Drop this node's entries of a service (a purge made here or announced by another node)."""
        return len(self._drop_local(f"{service_id}:"))

    def _drop_local(self, prefix: str) -> set[str]:
        doomed = {key for key in self._l1.keys() if key.startswith(prefix)}
        for key in doomed:
            self._l1.pop(key)
        return doomed

    async def purge_service(self, service_id: UUID | str) -> int:
        """Drop a service's entries here and in Redis; returns how many distinct keys were dropped.
        Raises RedisUnavailable when Redis is configured but fails: a purge that silently left
        entries behind would keep serving them, so the API should answer 503 instead."""
        prefix = f"{service_id}:"
        dropped = self._drop_local(prefix)
        if not self._link.configured:
            return len(dropped)
        pattern = f"{ENTRY_PREFIX}{prefix}*"
        for node in await self._link.call(_scan_targets):
            cursor = 0
            while True:
                # call() runs each operation once, at once: the lambdas read this turn's cursor and names.
                cursor, names = await self._link.call(lambda r: _scan(r, node, cursor, pattern))
                if names:
                    await self._link.call(lambda r: r.unlink(*names))
                    dropped.update((name.decode() if isinstance(name, bytes) else name)[len(ENTRY_PREFIX):]
                                   for name in names)
                if cursor == 0:
                    break
        return len(dropped)

    # -- single flight ------------------------------------------------------------------------

    @asynccontextmanager
    async def flight(self, key: str, timeout: float | None = None) -> AsyncIterator[Flight]:
        """Coalesce concurrent misses for `key`; see `Flight` for what the entrant should do.

        On this node the first entrant leads; the others wait (at most `timeout`, default
        `flight_timeout`) until it leaves. If it stored an entry they all go on at once to read
        it. If it failed and shared its failure (`Flight.share_failure`: the pipeline does so for
        the upstream's 502, 503 and 504), every entrant that was waiting for it raises a fresh
        copy at once: no caller then waits for more than the one failed upstream call, and an
        entrant that comes after the failed flight has ended starts a new one. Otherwise (answer
        not cacheable, another error, cancellation) they go on ONE AT A TIME, each fetching in
        turn: the first cacheable answer then serves the rest. A waiter whose wait runs out goes
        on without the lock (leader=False), so nobody waits forever; `timeout` should therefore
        cover the leader's whole attempt, or a waiter makes a second upstream call after it.
        """
        deadline = time.monotonic() + (self.flight_timeout if timeout is None else timeout)
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        slot.entered += 1
        number = slot.entered
        waited = slot.users > 1  # someone is inside or queued: we are a follower
        holding = False
        token: str | None = None
        flight: Flight | None = None
        try:
            holding = await self._acquire(slot, deadline)
            if holding and (slot.filled or self._get_local(key) is not None):
                slot.lock.release()  # an answer is here: let the next waiter read it too
                holding = False
                yield Flight(leader=False)
                return
            if slot.failure is not None and number <= slot.failed_through:
                raise slot.failure()  # the fetch we waited for failed: so do we, at once
            if not holding:
                yield Flight(leader=False)
                return
            token, seen = await self._cross_node(key, deadline)
            if seen:
                slot.filled = True
            flight = Flight(leader=not (waited or seen))
            yield flight
        finally:
            try:
                if token is not None:
                    await self._release_lock(key, token)
            finally:
                if holding:
                    if flight is not None and flight._failure is not None:
                        # Everyone in or queued until now waited for this fetch (no await
                        # between here and the release: nobody slips in between).
                        slot.failure, slot.failed_through = flight._failure, slot.entered
                    slot.lock.release()
                slot.users -= 1
                if slot.users == 0 and self._slots.get(key) is slot:
                    del self._slots[key]

    @staticmethod
    async def _acquire(slot: _Slot, deadline: float) -> bool:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await slot.lock.acquire()
        except TimeoutError:
            return False
        return True

    async def _cross_node(self, key: str, deadline: float) -> tuple[str | None, bool]:
        """Take the Redis lock for `key`, or wait for the node holding it to store its answer.
        Returns (our lock token or None, whether the entry showed up). Without Redis, or once
        the wait is over, the caller simply proceeds: coalescing is then per node only. A lock
        this node took earlier and could not release is released first, and never waited for."""
        if not self._link.configured:
            return None, False
        if self._unreleased:
            await self._release_unreleased()
        token = secrets.token_hex(16)
        end = min(deadline, time.monotonic() + LOCK_MS / 1000)
        polled = False
        while True:
            try:
                if await self._link.call(lambda r: r.set(LOCK_PREFIX + key, token, nx=True, px=LOCK_MS)):
                    # Taken after another node held it: that node may have stored its answer and
                    # released the lock since our last look.
                    if polled and await self.get(key) is not None:
                        await self._release_lock(key, token)
                        return None, True
                    return token, False
            except RedisUnavailable:
                return None, False
            if self._still_ours(key):
                # Our own lock, still unreleased (Redis failed again meanwhile): nobody else is
                # fetching on its behalf, so go ahead; it expires within LOCK_MS.
                return None, False
            if time.monotonic() + POLL_SECONDS > end:
                return None, False
            await asyncio.sleep(POLL_SECONDS)
            polled = True
            if await self.get(key) is not None:
                return None, True

    def _still_ours(self, key: str) -> bool:
        found = self._unreleased.get(key)
        if found is not None and found[1] <= time.monotonic():
            del self._unreleased[key]  # expired in Redis by now
            return False
        return found is not None

    async def _release_lock(self, key: str, token: str) -> None:
        try:
            await self._link.call(lambda r: r.eval(_RELEASE, 1, LOCK_PREFIX + key, token))
        except RedisUnavailable:
            # Not released: remember it (the local state is what counts), so that this node does
            # not wait for it on its next miss, and release it once Redis answers again.
            self._unreleased[key] = (token, time.monotonic() + LOCK_MS / 1000)
            if len(self._unreleased) > 4 * RELEASES_PER_CALL:
                self._forget_expired()

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for key in [key for key, (_, expires) in self._unreleased.items() if expires <= now]:
            del self._unreleased[key]

    async def _release_unreleased(self) -> None:
        """Release the locks whose release failed (those not expired yet), in one Redis call per
        RELEASES_PER_CALL; if Redis fails again they stay for the next try."""
        self._forget_expired()
        while self._unreleased and self._link.usable():
            batch = list(self._unreleased.items())[:RELEASES_PER_CALL]
            names = [LOCK_PREFIX + key for key, _ in batch]
            tokens = [token for _, (token, _) in batch]
            try:
                await self._link.call(lambda r: self._release_many(r, names, tokens))
            except RedisUnavailable:
                return
            for key, held in batch:
                if self._unreleased.get(key) == held:  # not replaced meanwhile
                    del self._unreleased[key]

    async def _release_many(self, r: Client, names: list[str], tokens: list[str]) -> None:
        if not self._link.cluster:
            await r.eval(_RELEASE_MANY, len(names), *names, *tokens)
            return
        by_slot: dict[int, tuple[list[str], list[str]]] = {}
        for name, token in zip(names, tokens, strict=True):
            keys, values = by_slot.setdefault(key_slot(name.encode()), ([], []))
            keys.append(name)
            values.append(token)
        pipe = r.pipeline(transaction=False)
        for keys, values in by_slot.values():
            pipe.eval(_RELEASE_MANY, len(keys), *keys, *values)
        await pipe.execute()


async def _scan_targets(r: Client) -> list[Any]:
    """What a purge scans: the one server (None), or every primary of a cluster."""
    if not isinstance(r, RedisCluster):
        return [None]
    await r.initialize()  # a no-op once the cluster's nodes are known
    return list(r.get_primaries())


async def _scan(r: Client, node: Any, cursor: int, match: str) -> tuple[int, list[bytes]]:
    if node is None:
        found: tuple[int, list[bytes]] = await r.scan(cursor, match=match, count=1000)
        return found
    cursors, names = await r.scan(cursor, match=match, count=1000, target_nodes=node)
    return int(cursors[node.name]), names
