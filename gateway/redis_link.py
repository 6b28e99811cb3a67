"""The gateway's one Redis client: every call bounded by GATEWAY_REDIS_TIMEOUT, and after a
failure a short pause before the next try, so an outage costs requests nothing but the fallback.
Recovery is automatic: the first call after the pause that succeeds closes the breaker.

A refused or broken connection also closes every idle pooled connection: after Redis restarts,
all of them lead to the old server, and each would otherwise fail on its first use in turn (one
pause per stale connection, seconds after Redis is back). They reconnect when next used.

The URL (gateway/redis_urls.py) picks the client, each redis-py's own: one server
(`redis.asyncio.Redis` over a blocking pool), Redis Sentinel (`Sentinel(...).master_for`, over
the same blocking pool, which asks the sentinels for the primary's address whenever it
connects), or Redis Cluster (`RedisCluster`, which follows MOVED and ASK itself; its idle
connections taken newest first, without which an ASK is not followed: _NewestFirst). The same
bounds for each: MAX_CONNECTIONS (per node for a cluster, where calls wait for a turn instead of
failing with MaxConnectionsError), no retries (the pause is ours), redis-py's timeouts only the
outer bound."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics
from gateway.redis_urls import RedisTarget, parse_redis_url

log = logging.getLogger("gateway.redis")

T = TypeVar("T")
PAUSE_AFTER_FAILURE = 1.0
TIMEOUTS_BEFORE_PAUSE = 3
MAX_CONNECTIONS = 64


# How often a call's deadline may move because the event loop itself was busy (see answer_within);
# a call then takes at most about (1 + MAX_LAG_EXTENSIONS) x the timeout of idle time.
MAX_LAG_EXTENSIONS = 100
# How often the loop's lag is sampled while a Redis call is in flight, and how late a sample must
# run to say the loop was busy.
LAG_TICK = 0.005
LATE = 0.001


class RedisUnavailable(Exception):
    """Redis is not configured, failing, or slower than the timeout."""


class LoopLag:
    """How long the event loop was too busy to run a due callback, summed. A ticker is due every
    LAG_TICK seconds; when it runs late, the loop was saturated, and the whole time since the
    previous tick counts as busy (counting only the lateness would miss LAG_TICK of every busy
    turn, which adds up over a burst of many turns). It ticks only while a Redis call is in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self._busy = 0.0
        self._previous = self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def acquire(self) -> None:
        self.users += 1
        if self._handle is None:
            self._previous = self.loop.time()
            self._due = self._previous + LAG_TICK
            self._handle = self.loop.call_at(self._due, self._tick)

    def release(self) -> None:
        self.users -= 1

    def _late(self, now: float) -> float:
        """Busy time since the previous tick, as far as it is known at `now`."""
        return now - self._previous if now - self._due > LATE else 0.0

    def _tick(self) -> None:
        now = self.loop.time()
        self._busy += self._late(now)
        self._previous = now
        if self.users > 0:
            self._due = now + LAG_TICK
            self._handle = self.loop.call_at(self._due, self._tick)
        else:
            self._handle = None

    def busy(self) -> float:
        """Seconds the loop was busy so far, the tick that is overdue right now included."""
        return self._busy + (self._late(self.loop.time()) if self._handle is not None else 0.0)


_LAGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = weakref.WeakKeyDictionary()


def loop_lag() -> LoopLag:
    loop = asyncio.get_running_loop()
    lag = _LAGS.get(loop)
    if lag is None:
        lag = _LAGS[loop] = LoopLag(loop)
    return lag


@contextlib.asynccontextmanager
async def answer_within(timeout: float) -> AsyncIterator[None]:
    """`asyncio.timeout(timeout)`, except that time this process's own event loop is busy does not
    count (GATEWAY_REDIS_TIMEOUT, contract revision 3): under a burst the loop may run a few
    hundred milliseconds of other requests' work before it reads an answer Redis sent at once,
    and that is no reason to fall back.

    When the deadline's timer fires, the loop's lag since the call began (LoopLag) is taken off
    the time elapsed; while what is left is under the timeout, the deadline moves on by the
    difference (at most MAX_LAG_EXTENSIONS times). Past it, the call is cancelled one loop turn
    later, so an answer read in this same turn still wins.
    """
    loop = asyncio.get_running_loop()
    lag = loop_lag()
    lag.acquire()
    started, busy_before = loop.time(), lag.busy()
    try:
        async with asyncio.timeout(None) as scope:
            extensions = 0
            handle: asyncio.TimerHandle

            def fire() -> None:
                nonlocal extensions, handle
                now = loop.time()
                waited = (now - started) - (lag.busy() - busy_before)
                if waited < timeout and extensions < MAX_LAG_EXTENSIONS:
                    extensions += 1
                    handle = loop.call_at(now + max(0.001, timeout - waited), fire)
                else:
                    scope.reschedule(now)  # due at the next turn, after the callbacks queued in this one

            handle = loop.call_at(started + timeout, fire)
            try:
                yield
            finally:
                handle.cancel()
    finally:
        lag.release()


class _NewestFirst(collections.deque[Any]):
    """A cluster node's idle connections, the most recently released taken first.

    redis-py (8.1) follows an ASK redirection with two pooled commands on the new node, ASKING
    and then the command. Taken oldest first (`ClusterNode.acquire_connection` pops the left end,
    `release` appends to the right), the command goes out on another connection than the ASKING
    whenever the node has two idle ones: the node answers MOVED (back to the slot's old owner,
    which answers ASK again) until "TTL exhausted", so every call on a key of a migrating slot
    failed. Newest first, the command gets the connection the ASKING has just returned (no await
    between the two)."""

    def popleft(self) -> Any:
        return self.pop()


class _Cluster(RedisCluster):
    """redis-py's RedisCluster with two changes:

    - its nodes' idle connections are taken newest first (_NewestFirst);
    - a command waits for the cluster's nodes to be known (`initialize`) before it is routed:
      redis-py (8.1) picks a command's routing before it initializes, and commands issued
      together on a new client (a gateway's first burst, or the first after a failure) were
      sent as keyless ones, some failing with "Connection closed by server"."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def initialize(self, additional_startup_nodes_info: list[tuple[str, int]] | None = None,
                         last_failed_node_name: str | None = None) -> RedisCluster:
        await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        for node in self.nodes_manager.nodes_cache.values():
            idle = getattr(node, "_free", None)
            if isinstance(idle, collections.deque) and not isinstance(idle, _NewestFirst):
                node._free = _NewestFirst(idle, maxlen=idle.maxlen)
        return self


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (each new connection asks the sentinels where the primary is, and a
    changed primary closes the idle connections), blocking like the one-server pool."""


# A client of either kind: redis.Redis (one server, or the primary Sentinel names) or RedisCluster.
# Both take the commands, pipelines and scripts the gateway sends (their stubs differ in details).
Client = Any


class RedisLink:
    def __init__(self, url: str, timeout: float) -> None:
        self.timeout = timeout
        self.client: Client | None = None
        self.target: RedisTarget | None = None
        self._sentinel: Sentinel | None = None
        # Cluster only: a call waits for a turn, at most MAX_CONNECTIONS in flight (RedisCluster
        # raises MaxConnectionsError instead of waiting; a call takes one connection per node).
        self._turns: asyncio.Semaphore | None = None
        if url:
            self.target = parse_redis_url(url)  # gateway/settings.py has said why, if it fails
            self.client = self._build(self.target, url, timeout)
        self._paused_until = 0.0
        self._failures = 0  # in a row
        self.healthy = self.client is not None

    def _build(self, target: RedisTarget, url: str, timeout: float) -> Client:
        # redis-py's own timeouts count wall time, busy loop included: they are only the outer
        # bound; each call's deadline is answer_within's.
        outer = max(5.0, timeout * (1 + MAX_LAG_EXTENSIONS))
        timeouts: dict[str, Any] = {"socket_timeout": outer, "socket_connect_timeout": outer}
        if target.kind == "single":
            # A blocking pool: under a burst, calls wait (within the timeout) for a connection
            # instead of failing with MaxConnectionsError and tripping the fallback.
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=outer, health_check_interval=0, **timeouts)
            # No retries: with no `retry`, from_url's connections get Retry(NoBackoff(), 0) (a
            # Redis given a pool ignores its own `retry` argument).
            return redis.Redis(connection_pool=pool)
        tls: dict[str, Any] = {"ssl": True, **target.options} if target.tls else {}
        if target.kind == "sentinel":
            # The sentinels, asked in turn, none retried: redis.Redis retries 3 times by default,
            # with a backoff that would outlast every call while one sentinel is down.
            self._sentinel = Sentinel(
                target.hosts, sentinel_kwargs={**timeouts, **tls, "password": target.sentinel_password,
                                               "retry": Retry(NoBackoff(), 0)})
            # The primary's connections: no `retry` given, so none (Retry(NoBackoff(), 0)).
            return self._sentinel.master_for(
                target.master, connection_pool_class=_BlockingSentinelPool, max_connections=MAX_CONNECTIONS,
                timeout=outer, health_check_interval=0, db=target.db, username=target.username,
                password=target.password, **timeouts, **tls)
        self._turns = asyncio.Semaphore(MAX_CONNECTIONS)
        # No retries of a failed command (MOVED and ASK are followed all the same: redirections
        # are not retries), and each node's connections are made with none either.
        return _Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            max_connections=MAX_CONNECTIONS, retry=Retry(NoBackoff(), 0), health_check_interval=0,
            username=target.username, password=target.password, **timeouts, **tls)

    @property
    def configured(self) -> bool:
        return self.client is not None

    @property
    def cluster(self) -> bool:
        """A Redis Cluster: the keys of one script or transaction must share a slot (a hash tag)."""
        return self.target is not None and self.target.kind == "cluster"

    def usable(self) -> bool:
        return self.client is not None and time.monotonic() >= self._paused_until

    async def call(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        if not self.usable():
            raise RedisUnavailable("redis is paused after a failure" if self.client else "redis is not configured")
        assert self.client is not None
        try:
            async with answer_within(self.timeout):
                if self._turns is None:
                    result = await operation(self.client)
                else:
                    async with self._turns:
                        result = await operation(self.client)
        # RedisClusterException: not a RedisError (no node answers, a slot not covered, ...).
        except (RedisError, RedisClusterException, OSError, asyncio.TimeoutError) as exc:
            self._failures += 1
            timed_out = isinstance(exc, (asyncio.TimeoutError, RedisTimeoutError))
            # A refused or broken connection means Redis is gone: pause at once. A single slow
            # answer may be our own busy loop: pause only when timeouts keep coming.
            if not timed_out or self._failures >= TIMEOUTS_BEFORE_PAUSE:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            metrics.DEPENDENCY_ERRORS.labels("redis").inc()
            if self.healthy:
                log.warning("redis call failed (%s.%s); falling back for %.0f s", type(exc).__module__, type(exc).__name__, PAUSE_AFTER_FAILURE)
            self.healthy = False
            if not timed_out and isinstance(exc, (RedisConnectionError, RedisClusterException, OSError)):
                await self._drop_idle_connections()
            raise RedisUnavailable(type(exc).__name__) from exc
        self._failures = 0
        if not self.healthy:
            log.info("redis answers again")
            self.healthy = True
        return result

    async def _drop_idle_connections(self) -> None:
        """Close the pooled connections nobody is using: a broken one means the others are likely
        broken too (Redis restarted, or a proxy dropped them), and each would fail on its own.
        One at a time and only while still idle, with no await between the check and the close
        (`nowait`), so a connection another call has just taken is never closed under it:
        `ConnectionPool.disconnect(inuse_connections=False)` closes a snapshot in tasks of its
        own, by when some of them may be in use.

        A cluster keeps the idle connections per node (`ClusterNode._free`), each closed the same
        way; Sentinel's pool is a ConnectionPool like the one server's."""
        assert self.client is not None
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_nodes():
                idle = getattr(node, "_free", None)
                if idle is None:  # another redis-py: the node's own method
                    with contextlib.suppress(Exception):
                        await node.disconnect_free_connections()
                else:
                    await self._close_idle(idle)
            return
        pool = self.client.connection_pool
        idle = getattr(pool, "_available_connections", None)
        if idle is None:  # another redis-py: its own method, which is close enough
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)
            return
        await self._close_idle(idle)

    @staticmethod
    async def _close_idle(idle: Any) -> None:
        for connection in list(idle):
            if connection in idle and connection.is_connected:
                with contextlib.suppress(Exception):  # best effort: it reconnects when used
                    await connection.disconnect(nowait=True)

    async def ping(self) -> bool:
        try:
            await self.call(lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    async def close(self) -> None:
        if isinstance(self.client, RedisCluster):
            await self.client.aclose()
        elif self.client is not None:
            await self.client.aclose(close_connection_pool=True)
        if self._sentinel is not None:
            await self._sentinel.aclose()
