"""The request stages of the proxy, in order. Each fills in the context or raises a problem.

authenticate → authorize → route → rate_limit; then the cache stage (gateway.proxy.caching)
around the terminal `forward` (gateway.proxy.forward).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from auth.principal import role_meets
from gateway import metrics
from gateway.auth_failures import identify_request
from gateway.errors import Forbidden, MethodNotAllowed, NotFound, RateLimited, ServiceUnavailable
from gateway.proxy.context import ProxyContext
from gateway.proxy.ratelimit import RateLimitUnavailable
from gateway.proxy.runtime import runtime_of
from routing.table import MethodNotAllowed as NoSuchMethod
from routing.table import NoRoute


async def authenticate(ctx: ProxyContext) -> None:
    """401, or 429 for a client address past GATEWAY_AUTH_FAILURES_PER_MINUTE failed credentials."""
    rt = runtime_of(ctx.request)
    ctx.principal = await identify_request(ctx.request, rt.verifier, rt.callers, rt.callers.failures)


async def authorize(ctx: ProxyContext) -> None:
    """Member of the space (403 otherwise), live installation (404), role ≥ min_role (403)."""
    principal = ctx.principal
    assert principal is not None
    if principal.is_api_key:
        role = principal.api_key_role if principal.api_key_space_id == ctx.space_id else None
    else:
        assert principal.user_id is not None
        role = await runtime_of(ctx.request).callers.role(ctx.space_id, principal.user_id)
    if role is None:
        raise Forbidden("You are not a member of this space")
    installation = ctx.state.installation(ctx.space_id, ctx.slug)
    if installation is None or installation.status != "active":
        raise NotFound("This space has no active installation of that plugin")
    if not role_meets(role, installation.min_role):
        raise Forbidden(f"Calling this plugin needs the space role '{installation.min_role}' or higher")
    ctx.role, ctx.installation = role, installation


# Never passed to a plugin, whatever its routes say, `*` routes included: TRACE (and Microsoft's
# TRACK) echo the request, credentials the gateway injected included; CONNECT asks for a tunnel.
# Compared in any letter case: methods are case-sensitive, but not every server treats them so.
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})


def _allow(methods: tuple[str, ...]) -> list[str]:
    return [m for m in methods if m.upper() not in REFUSED_METHODS]


async def route(ctx: ProxyContext) -> None:
    """The matching route (404 when none matches, 405 with `Allow` for another method only)."""
    assert ctx.installation is not None
    table, method = ctx.state.table, ctx.request.method
    try:
        if method.upper() in REFUSED_METHODS:
            raise MethodNotAllowed(_allow(table.allowed(ctx.slug, ctx.installation.id, ctx.path)))
        ctx.match = table.match(ctx.slug, ctx.installation.id, method, ctx.path)
    except NoRoute:
        raise NotFound("No route of this plugin matches the path") from None
    except NoSuchMethod as exc:
        raise MethodNotAllowed(_allow(exc.allowed)) from None


async def rate_limit(ctx: ProxyContext) -> None:
    """The route's `rate_limit` per `rate_limit_window` seconds, counted per route and space."""
    assert ctx.match is not None  # route() ran first
    matched = ctx.match.route
    if not matched.rate_limit or not matched.rate_limit_window:
        return
    try:
        decision = await runtime_of(ctx.request).limiter.check(
            matched.id, ctx.space_id, matched.rate_limit, matched.rate_limit_window)
    except RateLimitUnavailable as exc:  # GATEWAY_RATE_LIMIT_FAILURE=closed and Redis is away
        raise ServiceUnavailable("Rate limits cannot be checked right now", exc.retry_after) from None
    headers = decision.headers()
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(ctx.slug, str(matched.id)).inc()
        raise RateLimited(f"At most {decision.limit} requests per {decision.window} s; retry in {decision.reset} s",
                          headers=headers)
    ctx.response_headers.update(headers)


# A stage fills in the context, raises a GatewayError, or returns an answer that ends the request.
Stage = Callable[[ProxyContext], Awaitable[web.StreamResponse | None]]
REQUEST_STAGES: tuple[Stage, ...] = (authenticate, authorize, route, rate_limit)
