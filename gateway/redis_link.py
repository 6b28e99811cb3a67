"""The gateway's one Redis client: every call bounded by GATEWAY_REDIS_TIMEOUT, and after a
failure a short pause before the next try, so an outage costs requests nothing but the fallback.
Recovery is automatic: the first call after the pause that succeeds closes the breaker.

A refused or broken connection also closes every idle pooled connection: after Redis restarts,
all of them lead to the old server, and each would otherwise fail on its first use in turn (one
pause per stale connection, seconds after Redis is back). They reconnect when next used."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics

log = logging.getLogger("gateway.redis")

T = TypeVar("T")
PAUSE_AFTER_FAILURE = 1.0
TIMEOUTS_BEFORE_PAUSE = 3
MAX_CONNECTIONS = 64


class RedisUnavailable(Exception):
    """Redis is not configured, failing, or slower than the timeout."""


class RedisLink:
    def __init__(self, url: str, timeout: float) -> None:
        self.timeout = timeout
        self.client: redis.Redis | None = None
        if url:
            # A blocking pool: under a burst, calls wait (within the timeout) for a connection
            # instead of failing with MaxConnectionsError and tripping the fallback.
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
                socket_connect_timeout=timeout, health_check_interval=0)
            self.client = redis.Redis(connection_pool=pool, retry=None)
        self._paused_until = 0.0
        self._failures = 0  # in a row
        self.healthy = self.client is not None

    @property
    def configured(self) -> bool:
        return self.client is not None

    def usable(self) -> bool:
        return self.client is not None and time.monotonic() >= self._paused_until

    async def call(self, operation: Callable[[redis.Redis], Awaitable[T]]) -> T:
        if not self.usable():
            raise RedisUnavailable("redis is paused after a failure" if self.client else "redis is not configured")
        assert self.client is not None
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(self.client)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failures += 1
            timed_out = isinstance(exc, (asyncio.TimeoutError, RedisTimeoutError))
            # A refused or broken connection means Redis is gone: pause at once. A single slow
            # answer may be our own busy loop: pause only when timeouts keep coming.
            if not timed_out or self._failures >= TIMEOUTS_BEFORE_PAUSE:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            metrics.DEPENDENCY_ERRORS.labels("redis").inc()
            if self.healthy:
                log.warning("redis call failed (%s); falling back for %.0f s", type(exc).__name__, PAUSE_AFTER_FAILURE)
            self.healthy = False
            if not timed_out and isinstance(exc, (RedisConnectionError, OSError)):
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
        own, by when some of them may be in use."""
        assert self.client is not None
        pool = self.client.connection_pool
        idle = getattr(pool, "_available_connections", None)
        if idle is None:  # another redis-py: its own method, which is close enough
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)
            return
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
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)
