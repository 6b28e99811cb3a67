"""observe: record each proxied request's metrics once, whatever stage answered, and hand the
proxy's fields to the request's access line (written by gateway.middleware, which alone knows
the final status and bytes, so that a request yields exactly one line).

Labels only from bounded sets: the slug and route id only once they are known to exist
(an unknown slug is caller input), methods outside the standard set as OTHER.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway import metrics
from gateway.middleware import ACCESS_FIELDS, CACHE_STATUS_HEADER
from gateway.proxy.context import ProxyContext

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.lru_cache(maxsize=8192)
def _series(service: str, route: str, method: str, status_class: str) -> tuple[Any, Any, Any, Any]:
    """The labelled children, looked up once per label set: `labels()` costs more per request
    than the increments themselves. Label sets are bounded (see above), and so is this cache."""
    return (metrics.REQUESTS.labels(service, route, method, status_class),
            metrics.REQUEST_DURATION.labels(service), metrics.UPSTREAM_DURATION.labels(service),
            metrics.GATEWAY_DURATION.labels(service))


def observe(ctx: ProxyContext | None, method: str, status: int, seconds: float) -> None:
    installation = ctx.installation if ctx else None
    service = installation.service_slug if installation else "-"
    route = str(ctx.match.route.id) if ctx and ctx.match else "-"
    requests, total, upstream_time, gateway_time = _series(
        service, route, method if method in STANDARD_METHODS else "OTHER", f"{status // 100}xx")
    requests.inc()
    total.observe(seconds)
    upstream = ctx.upstream_seconds if ctx else None
    if upstream is not None:
        upstream_time.observe(upstream)
        gateway_time.observe(max(seconds - upstream, 0.0))
    else:
        gateway_time.observe(seconds)
    if ctx is not None:
        _annotate_access(ctx)


def _annotate_access(ctx: ProxyContext) -> None:
    installation, match, upstream = ctx.installation, ctx.match, ctx.upstream_seconds
    ctx.request[ACCESS_FIELDS] = {
        # Known services only, as for metrics: an unknown slug is caller input.
        "service": installation.service_slug if installation else None,
        "route_id": str(match.route.id) if match else None,
        "route": match.route.route_path if match else None,
        "space_id": str(ctx.space_id) if ctx.space_id else None,
        "upstream_ms": round(upstream * 1000, 3) if upstream is not None else None,
        "cache": ctx.response_headers.get(CACHE_STATUS_HEADER),
    }
