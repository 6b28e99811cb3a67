"""GET /metrics on its own listener (GATEWAY_METRICS_HOST:GATEWAY_METRICS_PORT), apart from the
API and proxy, so that nothing a caller can reach exposes it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.appkeys import SETTINGS


async def serve_metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    return app


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Port 0 turns the listener off (tests read the registry directly)."""
    settings = app[SETTINGS]
    if not settings.metrics_port:
        yield
        return
    runner = web.AppRunner(metrics_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    yield
    await runner.cleanup()
