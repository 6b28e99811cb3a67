"""The gateway's one Redis client: every call bounded by GATEWAY_REDIS_TIMEOUT, and after a
failure a short pause before the next try, so an outage costs requests nothing but the fallback.
Recovery is automatic: the first call after the pause that succeeds closes the breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
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
            # A refused or broken connection means Redis is gone: pause at once. A single slow
            # answer may be our own busy loop: pause only when timeouts keep coming.
            if not isinstance(exc, (asyncio.TimeoutError, RedisTimeoutError)) or self._failures >= TIMEOUTS_BEFORE_PAUSE:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            metrics.DEPENDENCY_ERRORS.labels("redis").inc()
            if self.healthy:
                log.warning("redis call failed (%s); falling back for %.0f s", type(exc).__name__, PAUSE_AFTER_FAILURE)
            self.healthy = False
            raise RedisUnavailable(type(exc).__name__) from exc
        self._failures = 0
        if not self.healthy:
            log.info("redis answers again")
            self.healthy = True
        return result

    async def ping(self) -> bool:
        try:
            await self.call(lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)
