"""/spaces/{space_id}/installations/{installation_id}/routes: routes for one installation only.

The space's owners and admins (and platform admins) manage them; the route belongs to the
installation's service, so the proxy matches it together with the service-wide routes.

A space admin is not the vendor, and the route is sent the space's credentials and its members'
assertions: its target_url is relative (joined to the service's api_base_url) or on an origin
the vendor declared (routing.loader.vendor_origins), and its auth_config has no token_url of its
own. No name is resolved here: those hosts are the vendor's, judged when the vendor wrote them
and again at every connect, so these writes need no lookup at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from db import routes as repo
from db import scopes
from db.pagination import page_request
from gateway.api.caller import require_space_role, transaction
from gateway.api.models.common import ListQuery, page_of
from gateway.api.models.routes import Route, RouteCreate, RoutePatch
from gateway.api.registry import Call, endpoint
from gateway.api.service_routes import create, patch
from routing.loader import Origin, vendor_origins

TAG = "installation routes"
PATH = "/spaces/{space_id}/installations/{installation_id}/routes"


@asynccontextmanager
async def installation(call: Call[Any, Any]) -> AsyncIterator[tuple[asyncpg.Connection, dict[str, Any]]]:
    """The request's transaction and the live installation of the path (404 when not in the space)."""
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        yield conn, await scopes.live_installation(conn, call["space_id"], call["installation_id"])


def _scope(row: dict[str, Any]) -> tuple[UUID, UUID]:
    return row["service_id"], row["id"]


async def _vendor(conn: asyncpg.Connection, service_id: UUID) -> tuple[str | None, frozenset[Origin]]:
    """The service's api_base_url and the origins its installation routes may use."""
    base, targets = await repo.vendor_urls(conn, service_id)
    return base, vendor_origins(base, targets)


@endpoint("GET", PATH, summary="List an installation's own routes", tag=TAG, query=ListQuery,
          response=page_of(Route), errors=(403,))
async def list_installation_routes(call: Call[None, ListQuery]) -> dict[str, Any]:
    async with installation(call) as (conn, inst):
        return await repo.list_routes(conn, *_scope(inst), page_request(call.query.limit, call.query.cursor))


@endpoint("POST", PATH, summary="Add a route for one installation", tag=TAG, body=RouteCreate,
          response=Route, status=201, errors=(403, 409, 422))
async def create_installation_route(call: Call[RouteCreate, None]) -> dict[str, Any]:
    async with installation(call) as (conn, inst):
        return await create(conn, *_scope(inst), call.body, *await _vendor(conn, inst["service_id"]))


@endpoint("GET", PATH + "/{route_id}", summary="Read an installation's route", tag=TAG,
          response=Route, errors=(403,))
async def get_installation_route(call: Call[None, None]) -> dict[str, Any]:
    async with installation(call) as (conn, inst):
        return await repo.get_route(conn, call["route_id"], *_scope(inst))


@endpoint("PATCH", PATH + "/{route_id}", summary="Change an installation's route", tag=TAG,
          body=RoutePatch, response=Route, errors=(403, 409, 422))
async def patch_installation_route(call: Call[RoutePatch, None]) -> dict[str, Any]:
    async with installation(call) as (conn, inst):
        return await patch(conn, call["route_id"], *_scope(inst), call.body,
                           *await _vendor(conn, inst["service_id"]))


@endpoint("DELETE", PATH + "/{route_id}", summary="Delete an installation's route", tag=TAG,
          status=204, errors=(403,))
async def delete_installation_route(call: Call[None, None]) -> None:
    async with installation(call) as (conn, inst):
        await repo.delete_route(conn, call["route_id"], *_scope(inst))
