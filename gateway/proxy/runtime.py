"""What the proxy holds for the life of the app, opened and closed in one cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import aiohttp
from aiohttp import web

from auth.jwt import JwtVerifier
from db.migrate import load_migrations
from db.pool import Database
from gateway import metrics
from gateway.appkeys import DB, JWT, KEYRING, SETTINGS
from gateway.proxy.assertion import AssertionSigner
from gateway.proxy.assignment_touches import AssignmentTouches
from gateway.proxy.breaker import Breakers
from gateway.proxy.cache import ResponseCache
from gateway.proxy.callers import CallerCache
from gateway.proxy.pools import UpstreamPools
from gateway.proxy.probes import HealthProber
from gateway.proxy.ratelimit import RateLimiter
from gateway.proxy.resolver import PublicOnlyResolver
from gateway.proxy.upstream_auth import UpstreamAuth
from gateway.redis_link import RedisLink
from gateway.settings import Settings
from gateway.snapshot import Snapshot, SnapshotUnusable
from gateway.webhooks import COURIER, WebhookCourier
from routing.loader import ProxyState, Rows, StateLoader


@dataclass(slots=True)
class ProxyRuntime:
    settings: Settings
    loader: StateLoader
    callers: CallerCache
    verifier: JwtVerifier
    session: aiohttp.ClientSession
    signer: AssertionSigner
    upstream_auth: UpstreamAuth
    redis: RedisLink
    cache: ResponseCache
    limiter: RateLimiter
    pools: UpstreamPools
    breakers: Breakers
    assignment_touches: AssignmentTouches


log = logging.getLogger("gateway.proxy")

PROXY: Final = web.AppKey("proxy", ProxyRuntime)
CACHE_PURGE: Final = "cache_purge"  # the `table` of the notification a cache purge sends
HEALTH: Final = "health"  # ... and of the one gateway_record_health sends (migration 1100)
SIGNER: Final = web.AppKey("assertion_signer", AssertionSigner)


def runtime_of(request: web.Request) -> ProxyRuntime:
    return request.app[PROXY]


def upstream_pools(settings: Settings) -> UpstreamPools:
    """The bound on proxied calls in flight per upstream host, shared fairly between spaces."""
    return UpstreamPools(settings.upstream_pool_per_host, settings.upstream_space_share,
                         settings.upstream_pool_timeout)


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """One session for every upstream call: keep-alive connections per host, no cookie jar
    (one tenant's cookies must never reach another), nothing decompressed or added on our own."""
    connector = aiohttp.TCPConnector(
        # No limits here: the connector's own queue is first come, first served and has no
        # deadline, so one space could hold a plugin's every connection and everyone else would
        # wait behind it without end. The fair pools (gateway.proxy.pools) bound proxied calls
        # per host instead, GATEWAY_UPSTREAM_POOL_PER_HOST of them, and a call holds its slot for
        # its whole exchange, so connections in use per host stay within that; the idle ones are
        # reused or closed after keepalive_timeout. The only other calls are OAuth2 token
        # requests, one at a time per installation (gateway.proxy.upstream_auth), each made by a
        # proxied call that holds a slot: they are bounded by the slots too. Webhook deliveries
        # are bounded by their courier's own slots (gateway.webhooks: per host and in all).
        limit=0,
        limit_per_host=0,
        resolver=PublicOnlyResolver(allow_private=settings.allow_private_upstreams),
        ttl_dns_cache=10,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout,
                                      sock_read=settings.upstream_timeout),
    )


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = upstream_session(settings)
    redis_link = RedisLink(settings.redis_url, settings.redis_timeout)
    cache = ResponseCache.from_settings(settings)  # its own Redis: GATEWAY_CACHE_REDIS_URL
    callers = CallerCache.from_settings(app[DB], settings)  # GATEWAY_CALLER_CACHE_TTL, GATEWAY_AUTH_FAILURES_PER_MINUTE
    upstream_auth = UpstreamAuth(app[KEYRING], session, allow_private=settings.allow_private_upstreams)
    breakers = Breakers(settings.breaker_failures, settings.breaker_open_seconds)
    touches = AssignmentTouches(app[DB])

    def on_change(change: dict[str, Any]) -> None:
        callers.on_change(change)
        if change.get("table") == HEALTH and change.get("status") == "healthy":  # a probe, any node
            with contextlib.suppress(KeyError, ValueError, TypeError):
                breakers.close_installation(UUID(change["id"]))
        if change.get("table") in ("service_installations", "service_management_assignments", "*"):
            upstream_auth.invalidate()
        if change.get("table") == CACHE_PURGE:  # a purge made through another node
            cache.drop_local_service(change["id"])

    def on_reload(state: ProxyState) -> None:
        metrics.ROUTES.set(state.table.size)
        metrics.ROUTES_LOADED.set(state.loaded_at)
        # The route table is long-lived and large (10,000 routes: ~100,000 objects); left to the
        # cyclic collector, every full collection walks it while requests wait. Frozen, it is
        # skipped (an old table is still freed by reference counting once swapped out).
        gc.freeze()

    snapshot = (Snapshot(Path(settings.snapshot_path), app[KEYRING], load_migrations()[-1].version)
                if settings.snapshot_path else None)

    async def save_snapshot(rows: Rows) -> None:
        if snapshot is None:
            return
        routes, installations, assignments = rows
        payload = {"routes": routes, "installations": installations, "assignments": assignments, **callers.export()}
        try:
            metrics.SNAPSHOT_WRITTEN.set(await asyncio.to_thread(snapshot.write, payload))
        except (OSError, TypeError, ValueError) as exc:  # a full disk must not stop the loader
            log.warning("snapshot not written: %s", exc)
        metrics.SNAPSHOT_IN_USE.set(0)

    loader = StateLoader(app[DB], on_change=on_change, on_reload=on_reload, on_rows=save_snapshot)
    limiter = RateLimiter(redis_link, settings.rate_limit_failure)
    app[PROXY] = ProxyRuntime(settings, loader, callers, app[JWT], session, app[SIGNER], upstream_auth,
                              redis_link, cache, limiter, upstream_pools(settings), breakers, touches)
    prober = HealthProber(loader, app[DB], redis_link, session, upstream_auth, breakers,
                          allow_private=settings.allow_private_upstreams)
    tasks = [asyncio.create_task(loader.run()), asyncio.create_task(callers.run()),
             asyncio.create_task(prober.run()), asyncio.create_task(touches.run())]
    courier = app[COURIER] = WebhookCourier.from_settings(app[DB], session, app[SIGNER], settings)
    tasks.append(asyncio.create_task(courier.run()))
    if snapshot is not None:
        tasks.append(asyncio.create_task(_restore_when_unreachable(app[DB], loader, callers, snapshot)))
    if redis_link.configured:
        tasks.append(asyncio.create_task(limiter.run_heartbeat()))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await prober.close()
    await courier.close()
    await touches.flush()
    await callers.flush_last_used()
    if redis_link.configured:
        await limiter.leave()
    await session.close()
    await redis_link.close()
    await cache.close()


RESTORE_AFTER_SECONDS: Final = 2.0  # how long a starting node waits for PostgreSQL before the snapshot


async def _restore_when_unreachable(db: Database, loader: StateLoader, callers: CallerCache,
                                    snapshot: Snapshot) -> None:
    """At start: serve the snapshot if PostgreSQL has not answered within RESTORE_AFTER_SECONDS
    (the live load replaces it as soon as it does)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(db.ready.wait(), RESTORE_AFTER_SECONDS)
        return
    if loader.loaded.is_set():
        return
    try:
        found = await asyncio.to_thread(snapshot.read)
    except SnapshotUnusable as exc:
        log.warning("snapshot %s not used: it %s", snapshot.path, exc)
        return
    if found is None or loader.loaded.is_set():
        return
    payload, written_at = found
    callers.seed(payload)
    await loader.restore((payload["routes"], payload["installations"], payload["assignments"]), written_at)
    metrics.SNAPSHOT_IN_USE.set(1)
    metrics.SNAPSHOT_WRITTEN.set(written_at)
