"""GET /metrics on its own listener (GATEWAY_METRICS_HOST:GATEWAY_METRICS_PORT), apart from the
API and proxy, so that nothing a caller can reach exposes it.

Under `gateway serve` the gunicorn master binds the metrics socket once, before it forks, and
every worker accepts on it (gateway/serve.py): whichever worker takes a scrape answers with the
sum of every worker's values, read from PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode). In-process servers (the tests) serve this process's registry on
GATEWAY_METRICS_PORT, or nothing when it is 0.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_REGISTRY: Final = web.AppKey("metrics_registry", CollectorRegistry)
# Listening sockets inherited from the gunicorn master.
METRICS_SOCKETS: Final = web.AppKey("metrics_sockets", list[socket.socket])
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


async def serve_metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS_REGISTRY]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def merged_registry() -> CollectorRegistry:
    """Every process's values when PROMETHEUS_MULTIPROC_DIR is set, else this process's."""
    if not os.environ.get(MULTIPROC_ENV):
        from gateway import metrics

        return metrics.REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def metrics_app(registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application()
    app[METRICS_REGISTRY] = registry or merged_registry()
    app.router.add_get("/metrics", serve_metrics)
    return app


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    from gateway.appkeys import SETTINGS

    sockets = app.get(METRICS_SOCKETS)
    settings = app[SETTINGS]
    if not sockets and not settings.metrics_port:
        yield
        return
    runner = web.AppRunner(metrics_app(), access_log=None)
    await runner.setup()
    if sockets:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
    else:
        await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    yield
    await runner.cleanup()
