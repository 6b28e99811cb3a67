"""The response-cache stage: it wraps the terminal `forward`, because a miss must hold its
single flight until the answer is stored (Envoy's cache filter sits around the router the same way).

    BYPASS  the route caches, but not this method (only GET and HEAD are cached)
    HIT     served from the cache: no upstream call
    MISS    forwarded; the answer is stored while it streams to the caller, if cacheable
    STALE   the upstream failed (502/503/504, an open breaker included) and the route's
            `stale_if_error` keeps an expired answer that long past its TTL: that one is served

Concurrent misses of one key share one upstream call (`ResponseCache.flight`). When that call
fails with the upstream's 502, 503 or 504, the callers waiting for it get the same problem at
once instead of calling the upstream again one after another; they wait for the leader's whole
attempt (pool, connect and read timeouts, see `flight_wait`), never for two of them.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from multidict import CIMultiDict

from gateway import metrics
from gateway.errors import GatewayError
from gateway.middleware import REQUEST_ID_HEADER, request_id_of
from gateway.proxy.cache import CachedResponse, cache_key, cacheable
from gateway.proxy.context import Capture, ProxyContext
from gateway.proxy.headers import downstream_response_headers
from gateway.proxy.runtime import runtime_of

CACHE_STATUS_HEADER = "X-Cache-Status"
CACHED_METHODS = frozenset({"GET", "HEAD"})
# Per-request or per-connection headers are never replayed from a stored answer.
NOT_STORED = frozenset({"age", "date", "x-request-id", "content-length", "set-cookie", "connection",
                        "keep-alive", "transfer-encoding", "ratelimit-limit", "ratelimit-remaining",
                        "ratelimit-reset", "ratelimit-policy", "ratelimit", "retry-after", "x-cache-status"})

# The forward stage's own failures (upstream unreachable or broken, busy, slower than the timeout):
# every caller waiting for the same fetch would meet them too.
SHARED_FAILURES = frozenset({502, 503, 504})
# How much longer than the leader's own timeouts its followers wait for it: the leader answers
# its failure right after its timer fires, and the followers must hear of it before theirs does.
FLIGHT_GRACE = 1.0

Terminal = Callable[[ProxyContext], Awaitable[web.StreamResponse]]


def _serve(ctx: ProxyContext, entry: CachedResponse, now: float, status: str = "HIT") -> web.Response:
    response = web.Response(status=entry.status, body=None if ctx.request.method == "HEAD" else entry.body,
                            headers=CIMultiDict(entry.returned))  # filtered (CachedResponse.returned)
    response.headers.update(ctx.response_headers)
    response.headers[CACHE_STATUS_HEADER] = status
    response.headers["Age"] = str(entry.age(now))
    response.headers[REQUEST_ID_HEADER] = request_id_of(ctx.request)
    return response


async def cached(ctx: ProxyContext, terminal: Terminal) -> web.StreamResponse:
    assert ctx.match is not None  # the stages routed it
    route, request = ctx.match.route, ctx.request
    if not route.cache_enabled or not route.cache_ttl:
        return await terminal(ctx)
    slug = ctx.slug
    if request.method not in CACHED_METHODS:
        ctx.response_headers[CACHE_STATUS_HEADER] = "BYPASS"
        metrics.CACHE.labels(slug, "bypass").inc()
        return await terminal(ctx)

    rt = runtime_of(request)
    assert ctx.installation is not None and ctx.principal is not None
    key = cache_key(
        space_id=ctx.space_id, caller=ctx.principal.subject, route=route,
        installation_id=ctx.installation.id, installation_version=ctx.installation.version,
        method=request.method, path=ctx.path, raw_query=request.raw_path.partition("?")[2],
        accept=request.headers.get("Accept", ""), accept_encoding=request.headers.get("Accept-Encoding", ""),
        instance_service_id=ctx.instance_service_id)
    cache = rt.cache
    entry = await cache.get(key)
    if entry is not None and entry.fresh(cache.clock()):
        metrics.CACHE.labels(slug, "hit").inc()
        return _serve(ctx, entry, cache.clock())
    stale = entry  # None, or an answer past its TTL kept for stale_if_error
    ctx.stale_fallback = stale is not None
    try:
        async with cache.flight(key, timeout=flight_wait(ctx)) as flight:
            if not flight.leader:
                entry = await cache.get(key)
                if entry is not None and entry.fresh(cache.clock()):
                    metrics.CACHE.labels(slug, "hit").inc()
                    return _serve(ctx, entry, cache.clock())
            metrics.CACHE.labels(slug, "miss").inc()
            # A row written before GATEWAY_CACHE_MAX_TTL was enforced (or straight into the
            # table) is held to it too.
            ttl = min(route.cache_ttl, rt.settings.cache_max_ttl)
            try:
                return await _fetch_and_store(ctx, terminal, key, ttl)
            except GatewayError as exc:
                if exc.status in SHARED_FAILURES:
                    flight.share_failure(partial(_fresh, exc))
                raise
    except GatewayError as exc:
        if stale is None or exc.status not in SHARED_FAILURES or stale.kept_until <= cache.clock():
            raise
        ctx.response_headers.pop(CACHE_STATUS_HEADER, None)
        metrics.CACHE.labels(slug, "stale").inc()
        return _serve(ctx, stale, cache.clock(), status="STALE")


def flight_wait(ctx: ProxyContext) -> float:
    """How long a caller waits for the leader of its key's flight: the leader's whole attempt,
    which is bounded by the upstream pool's wait, the connect timeout and the read timeout (the
    route's own `connect_timeout`/`timeout` options, else the settings), plus FLIGHT_GRACE. A
    shorter wait would run out just before the leader's failure arrives, and the waiter would
    then start a second full upstream call of its own."""
    assert ctx.match is not None
    settings, options = runtime_of(ctx.request).settings, ctx.match.route.options
    return (settings.upstream_pool_timeout
            + float(options.get("connect_timeout", settings.upstream_connect_timeout))
            + float(options.get("timeout", settings.upstream_timeout)) + FLIGHT_GRACE)


def _fresh(error: GatewayError) -> GatewayError:
    """A new problem of the same class, detail and headers for one waiting caller: never the
    leader's instance (its traceback, cause and headers dict belong to the leader's request)."""
    fresh = copy.copy(error)  # BaseException's reduce: type(error)(*args), then its __dict__
    fresh.headers = dict(error.headers)
    return fresh


async def _fetch_and_store(ctx: ProxyContext, terminal: Terminal, key: str, ttl: int) -> web.StreamResponse:
    rt = runtime_of(ctx.request)
    ctx.response_headers[CACHE_STATUS_HEADER] = "MISS"
    ctx.capture = Capture(rt.settings.cache_max_body_bytes)
    response = await terminal(ctx)
    capture = ctx.capture
    if capture.complete and not capture.overflow and cacheable(
            response.status, ctx.upstream_headers, capture.size, rt.settings.cache_max_body_bytes):
        returned = downstream_response_headers(ctx.upstream_headers)
        stored = tuple((k, v) for k, v in returned.items() if k.lower() not in NOT_STORED)
        assert ctx.match is not None
        stale = int(ctx.match.route.options.get("stale_if_error") or 0)
        await rt.cache.put(key, CachedResponse(response.status, stored, b"".join(capture.chunks),
                                               rt.cache.clock(), ttl, stale))
    return response
