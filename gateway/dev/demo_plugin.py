"""The demo plugin's own API: a tiny upstream that `gateway demo` runs on loopback, so a
newcomer sees a real proxied call (credential injected, caller identified) in the first minute."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

API_KEY_HEADER = "X-Demo-Key"


def demo_plugin_app(expected_key: str) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.headers.get(API_KEY_HEADER, ""), expected_key):
            return web.json_response({"error": "the gateway did not send this plugin's API key"}, status=401)
        return web.json_response({
            "message": "Hello from the demo plugin, through Plugin Gateway",
            "space_id": request.headers.get("X-Gateway-Space-Id"),
            "user_id": request.headers.get("X-Gateway-User-Id"),
            "installation_id": request.headers.get("X-Gateway-Installation-Id"),
            "api_key_injected_by_gateway": True,
            "signed_assertion_received": "X-Gateway-Assertion" in request.headers,
            "your_authorization_header_reached_me": "Authorization" in request.headers,
        })

    async def now(request: web.Request) -> web.Response:
        return web.json_response({"time": time.time()})

    app = web.Application()
    app.router.add_get("/v1/hello", hello)
    app.router.add_get("/v1/time", now)
    return app


def demo_plugin_ctx(port: int, expected_key: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs the demo plugin beside the gateway, in the same process."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(demo_plugin_app(expected_key), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
        await runner.cleanup()

    return run
