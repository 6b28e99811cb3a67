"""The proxy's aiohttp handlers, running the stages in order.

    parse target → authenticate → authorize → route → rate limit → cache ( forward )
                                                 observe (always, like Kong's log phase)

handle_proxy serves `/spaces/{space}/plugins/{slug}/...`; handle_manage serves
`/spaces/{space}/instance-services/{id}/manage/...` (gateway/proxy/management.py) with the same
pipeline, another authorize stage finding the plugin through the instance service's assignment.

Any stage stops the request by raising a GatewayError (rendered as problem+json by the
middleware) or by returning a response.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from gateway.errors import translate
from gateway.proxy.caching import cached
from gateway.proxy.context import ProxyContext
from gateway.proxy.forward import forward
from gateway.proxy.observe import observe
from gateway.proxy.runtime import runtime_of
from gateway.proxy.management import authorize_management
from gateway.proxy.stages import REQUEST_STAGES, Stage, authenticate, rate_limit, route
from gateway.proxy.target import parse_manage_target, parse_target

PROXY_PATH = "/spaces/{space_id}/plugins/{tail:.*}"
MANAGE_PATH = "/spaces/{space_id}/instance-services/{instance_service_id}/manage{tail:.*}"
MANAGEMENT_STAGES: tuple[Stage, ...] = (authenticate, authorize_management, route, rate_limit)


def _plugin_context(request: web.Request) -> ProxyContext:
    space_id, slug, path = parse_target(request.raw_path)
    return ProxyContext(request, runtime_of(request).loader.state, space_id, slug, path)


def _management_context(request: web.Request) -> ProxyContext:
    space_id, instance_service_id, path = parse_manage_target(request.raw_path)
    # The slug is the assigned plugin's, found by authorize_management.
    return ProxyContext(request, runtime_of(request).loader.state, space_id, "", path,
                        instance_service_id=instance_service_id)


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _plugin_context, REQUEST_STAGES)


async def handle_manage(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _management_context, MANAGEMENT_STAGES)


async def _handle(request: web.Request, context: Callable[[web.Request], ProxyContext],
                  stages: tuple[Stage, ...]) -> web.StreamResponse:
    started = time.perf_counter()
    ctx: ProxyContext | None = None
    status = 500
    try:
        ctx = context(request)
        response = await _run(ctx, stages)
        status = response.status
        return response
    except Exception as exc:
        error = translate(exc)
        status = error.status if error else 500
        raise
    finally:
        observe(ctx, request.method, status, time.perf_counter() - started)


async def _run(ctx: ProxyContext, stages: tuple[Stage, ...]) -> web.StreamResponse:
    for stage in stages:
        answer = await stage(ctx)
        if answer is not None:
            return answer
    return await cached(ctx, forward)


async def jwks(request: web.Request) -> web.Response:
    """The public key plugins verify X-Gateway-Assertion with."""
    return web.json_response(runtime_of(request).signer.jwks(),
                             headers={"Cache-Control": "public, max-age=300"})
