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
from gateway.middleware import problem_middleware
from gateway.settings import Settings

assert api  # imported for its endpoint registrations


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = app[DB]
    connecting = asyncio.create_task(db.connect())
    readiness = asyncio.create_task(health.mark_ready_when_possible(app))
    # Wait briefly so a healthy start is ready at once; a database outage must not block start.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(readiness), timeout=5)
    yield
    for task in (connecting, readiness):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await db.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[DB] = Database(settings.database_url)
    app[KEYRING] = KeyRing.parse(settings.encryption_keys)
    app[JWT] = JwtVerifier.from_config(
        secret=settings.jwt_secret, public_key=settings.jwt_public_key, jwks_url=settings.jwks_url,
        issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    app.on_cleanup.append(lambda app: app[JWT].close())  # the JWKS client session, if any
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    add_routes(app)
    app.cleanup_ctx.append(database_ctx)
    return app
