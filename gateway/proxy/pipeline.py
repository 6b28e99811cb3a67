"""handle_proxy: the proxy's one aiohttp handler, running the stages in order.

    parse target → authenticate → authorize → route → forward

Any stage stops the request by raising a GatewayError (rendered as problem+json by the
middleware) or by returning a response.
"""

from __future__ import annotations

from aiohttp import web

from gateway.proxy.context import ProxyContext
from gateway.proxy.forward import forward
from gateway.proxy.runtime import runtime_of
from gateway.proxy.stages import REQUEST_STAGES
from gateway.proxy.target import parse_target

PROXY_PATH = "/spaces/{space_id}/plugins/{tail:.*}"


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    space_id, slug, path = parse_target(request.raw_path)
    ctx = ProxyContext(request, runtime_of(request).loader.state, space_id, slug, path)
    for stage in REQUEST_STAGES:
        answer = await stage(ctx)
        if answer is not None:
            return answer
    return await forward(ctx)


async def jwks(request: web.Request) -> web.Response:
    """The public key plugins verify X-Gateway-Assertion with."""
    return web.json_response(runtime_of(request).signer.jwks(),
                             headers={"Cache-Control": "public, max-age=300"})
