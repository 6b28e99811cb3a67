"""observe: record each proxied request's metrics once, whatever stage answered.

Labels only from bounded sets: the slug and route id only once they are known to exist
(an unknown slug is caller input), methods outside the standard set as OTHER.
"""

from __future__ import annotations

from gateway import metrics
from gateway.proxy.context import ProxyContext

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe(ctx: ProxyContext | None, method: str, status: int, seconds: float) -> None:
    installation = ctx.installation if ctx else None
    service = installation.service_slug if installation else "-"
    route = str(ctx.match.route.id) if ctx and ctx.match else "-"
    metrics.REQUESTS.labels(service, route, method if method in STANDARD_METHODS else "OTHER",
                            f"{status // 100}xx").inc()
    metrics.REQUEST_DURATION.labels(service).observe(seconds)
    upstream = ctx.upstream_seconds if ctx else None
    if upstream is not None:
        metrics.UPSTREAM_DURATION.labels(service).observe(upstream)
        metrics.GATEWAY_DURATION.labels(service).observe(max(seconds - upstream, 0.0))
    else:
        metrics.GATEWAY_DURATION.labels(service).observe(seconds)
