"""The response-cache stage: it wraps the terminal `forward`, because a miss must hold its
single flight until the answer is stored (Envoy's cache filter sits around the router the same way).

    BYPASS  the route caches, but not this method (only GET and HEAD are cached)
    HIT     served from the cache: no upstream call
    MISS    forwarded; the answer is stored while it streams to the caller, if cacheable
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from gateway import metrics
from gateway.middleware import REQUEST_ID_HEADER, request_id_of
from gateway.proxy.cache import CachedResponse, cache_key, cacheable
from gateway.proxy.context import ProxyContext
from gateway.proxy.runtime import runtime_of

CACHE_STATUS_HEADER = "X-Cache-Status"
CACHED_METHODS = frozenset({"GET", "HEAD"})
# Per-request or per-connection headers are never replayed from a stored answer.
NOT_STORED = frozenset({"age", "date", "x-request-id", "content-length", "set-cookie", "connection",
                        "keep-alive", "transfer-encoding", "ratelimit-limit", "ratelimit-remaining",
                        "ratelimit-reset", "ratelimit-policy", "ratelimit", "retry-after", "x-cache-status"})

Terminal = Callable[[ProxyContext], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Capture:
    """The body of a MISS, collected while it streams, up to the cacheable size."""

    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False
    complete: bool = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow, self.chunks = True, []  # too big to keep: stop holding it at once
        else:
            self.chunks.append(chunk)


def _serve(ctx: ProxyContext, entry: CachedResponse, now: float) -> web.Response:
    response = web.Response(status=entry.status, body=None if ctx.request.method == "HEAD" else entry.body,
                            headers=CIMultiDict(entry.headers))
    response.headers[CACHE_STATUS_HEADER] = "HIT"
    response.headers["Age"] = str(entry.age(now))
    response.headers[REQUEST_ID_HEADER] = request_id_of(ctx.request)
    response.headers.update(ctx.response_headers)
    return response


async def cached(ctx: ProxyContext, terminal: Terminal) -> web.StreamResponse:
    route, request = ctx.match.route, ctx.request  # type: ignore[union-attr]
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
        accept=request.headers.get("Accept", ""), accept_encoding=request.headers.get("Accept-Encoding", ""))
    cache = rt.cache
    entry = await cache.get(key)
    if entry is None:
        async with cache.flight(key, timeout=rt.settings.upstream_timeout) as flight:
            if not flight.leader:
                entry = await cache.get(key)
            if entry is None:
                metrics.CACHE.labels(slug, "miss").inc()
                # A row written before GATEWAY_CACHE_MAX_TTL was enforced (or straight into the
                # table) is held to it too.
                ttl = min(route.cache_ttl, rt.settings.cache_max_ttl)
                return await _fetch_and_store(ctx, terminal, key, ttl)
    metrics.CACHE.labels(slug, "hit").inc()
    return _serve(ctx, entry, cache.clock())


async def _fetch_and_store(ctx: ProxyContext, terminal: Terminal, key: str, ttl: int) -> web.StreamResponse:
    rt = runtime_of(ctx.request)
    ctx.response_headers[CACHE_STATUS_HEADER] = "MISS"
    ctx.capture = Capture(rt.settings.cache_max_body_bytes)
    response = await terminal(ctx)
    capture = ctx.capture
    if capture.complete and not capture.overflow and cacheable(
            response.status, ctx.upstream_headers, capture.size, rt.settings.cache_max_body_bytes):
        stored = tuple((k, v) for k, v in ctx.upstream_headers.items() if k.lower() not in NOT_STORED)
        await rt.cache.put(key, CachedResponse(response.status, stored, b"".join(capture.chunks),
                                               rt.cache.clock(), ttl))
    return response
