"""handle_proxy: the proxy's one aiohttp handler, running the stages in order.

    parse target → authenticate → authorize → route → rate limit → cache ( forward )
                                                 observe (always, like Kong's log phase)

Any stage stops the request by raising a GatewayError (rendered as problem+json by the
middleware) or by returning a response.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.errors import translate
from gateway.proxy.caching import cached
from gateway.proxy.context import ProxyContext
from gateway.proxy.forward import forward
from gateway.proxy.observe import observe
from gateway.proxy.runtime import runtime_of
from gateway.proxy.stages import REQUEST_STAGES
from gateway.proxy.target import parse_target

PROXY_PATH = "/spaces/{space_id}/plugins/{tail:.*}"


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctx: ProxyContext | None = None
    status = 500
    try:
        space_id, slug, path = parse_target(request.raw_path)
        ctx = ProxyContext(request, runtime_of(request).loader.state, space_id, slug, path)
        response = await _run(ctx)
        status = response.status
        return response
    except Exception as exc:
        error = translate(exc)
        status = error.status if error else 500
        raise
    finally:
        observe(ctx, request.method, status, time.perf_counter() - started)


async def _run(ctx: ProxyContext) -> web.StreamResponse:
    for stage in REQUEST_STAGES:
        answer = await stage(ctx)
        if answer is not None:
            return answer
    return await cached(ctx, forward)


async def jwks(request: web.Request) -> web.Response:
    """The public key plugins verify X-Gateway-Assertion with."""
    return web.json_response(runtime_of(request).signer.jwks(),
                             headers={"Cache-Control": "public, max-age=300"})
