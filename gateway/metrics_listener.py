"""GET /metrics on its own listener (GATEWAY_METRICS_HOST:GATEWAY_METRICS_PORT), apart from the
API and proxy, so that nothing a caller can reach exposes it.

One process: the app opens the listener (metrics_listener_ctx) and serves gateway.metrics.REGISTRY.
Several workers: the master serves metrics_app(registry) with a registry that merges every
worker's values (gateway/workers.py); the workers open no listener. Nothing of the application is
imported here at module level, so that the master can use metrics_app without loading it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_REGISTRY: Final = web.AppKey("metrics_registry", CollectorRegistry)


async def serve_metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS_REGISTRY]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(registry: CollectorRegistry | None = None) -> web.Application:
    """The /metrics app; `registry` defaults to this process's (gateway.metrics.REGISTRY)."""
    if registry is None:
        from gateway import metrics

        registry = metrics.REGISTRY
    app = web.Application()
    app[METRICS_REGISTRY] = registry
    app.router.add_get("/metrics", serve_metrics)
    return app


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Port 0 turns the listener off (tests read the registry directly; workers leave it to the
    master)."""
    from gateway.appkeys import SETTINGS

    settings = app[SETTINGS]
    if not settings.metrics_port:
        yield
        return
    runner = web.AppRunner(metrics_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    yield
    await runner.cleanup()
