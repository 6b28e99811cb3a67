"""create_app(settings): the aiohttp application with its resources opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from auth.jwt import JwtVerifier
from db.encryption import KeyRing
from db.pool import Database
from gateway import api, health
from gateway.api.registry import add_routes
from gateway.appkeys import DB, JWT, KEYRING, SETTINGS
from gateway.connections import SERVER_OPTIONS  # noqa: F401  (tests build their servers with it)
from gateway.metrics_listener import metrics_listener_ctx
from gateway.middleware import problem_middleware
from gateway.proxy.assertion import AssertionSigner
from gateway.proxy.pipeline import MANAGE_PATH, PROXY_PATH, handle_manage, handle_proxy, jwks
from gateway.proxy.runtime import SIGNER, proxy_ctx
from gateway.settings import Settings

assert api  # imported for its endpoint registrations



async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = app[DB]
    # In the background: the gateway must start (and serve from memory) while PostgreSQL is away.
    connecting = asyncio.create_task(db.connect())
    yield
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    await db.close()


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    readiness = asyncio.create_task(health.mark_ready_when_possible(app))
    # Wait briefly so a healthy start is ready at once; an outage must not block the start.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(readiness), timeout=5)
    yield
    readiness.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await readiness


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[DB] = Database(settings.database_url, role=settings.db_role)
    app[health.READINESS] = health.Readiness()
    app[KEYRING] = KeyRing.parse(settings.encryption_keys)
    app[JWT] = JwtVerifier.from_config(
        secret=settings.jwt_secret, public_key=settings.jwt_public_key, jwks_url=settings.jwks_url,
        issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    app.on_cleanup.append(lambda app: app[JWT].close())  # the JWKS client session, if any
    app[SIGNER] = AssertionSigner.from_pem(settings.assertion_key, settings.assertion_issuer)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    add_routes(app)
    app.router.add_route("*", PROXY_PATH, handle_proxy)
    app.router.add_route("*", MANAGE_PATH, handle_manage)
    app.cleanup_ctx.extend([database_ctx, proxy_ctx, readiness_ctx, metrics_listener_ctx])
    return app
