"""/services/{service_id}/routes: a service's service-wide routes (installation_id NULL).

Anyone authenticated reads the routes of an approved or deprecated service, without
`auth_config`; maintainers and platform admins read every field and write. A write's URLs are
judged (which may resolve names) only once the caller is known to be a maintainer, and never
while a transaction is open.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from auth.principal import Principal
from db import routes as repo
from db import services as services_repo
from db.pagination import page_request
from gateway.api.caller import authenticate, transaction
from gateway.api.models.common import ListQuery, page_of
from gateway.api.models.routes import (
    PublicRoute, Route, RouteCreate, RoutePatch, RouteView, fill_placeholders, route_problems,
)
from gateway.api.registry import Call, endpoint
from gateway.api.services import can_maintain, check_urls_as_maintainer
from gateway.errors import NotFound, ValidationFailed
from routing.loader import Origin, installation_route_problems

TAG = "routes"
PUBLIC_STATUSES = ("approved", "deprecated")


def route_upstream_urls(values: dict[str, Any]) -> dict[str, str]:
    """The URLs of a route body that a registration check must judge, by field."""
    urls: dict[str, str] = {}
    target = values.get("target_url")
    if target and not target.startswith("/"):  # a relative target rides on the checked api_base_url
        urls["target_url"] = fill_placeholders(target)
    token_url = (values.get("auth_config") or {}).get("token_url")
    if token_url:
        urls["auth_config.token_url"] = token_url
    return urls


def check_route(row: dict[str, Any], api_base_url: str | None,
                origins: frozenset[Origin] | None = None) -> None:
    """The cross-field rules; with `origins` (an installation's route), the vendor's-hosts rule too."""
    problems = route_problems(row, api_base_url)
    if origins is not None:
        problems += installation_route_problems(row, origins)
    if problems:
        raise ValidationFailed(problems)


async def create(conn: asyncpg.Connection, service_id: UUID, installation_id: UUID | None,
                 body: RouteCreate, api_base_url: str | None,
                 origins: frozenset[Origin] | None = None) -> dict[str, Any]:
    check_route(body.model_dump(), api_base_url, origins)
    return await repo.create_route(conn, service_id, installation_id, body.values())


async def patch(conn: asyncpg.Connection, route_id: UUID, service_id: UUID, installation_id: UUID | None,
                body: RoutePatch, api_base_url: str | None,
                origins: frozenset[Origin] | None = None) -> dict[str, Any]:
    values = body.values()
    current = await repo.get_route(conn, route_id, service_id, installation_id, lock=True)
    check_route({**current, **values}, api_base_url, origins)
    return await repo.update_route(conn, route_id, values)


async def _view(conn: asyncpg.Connection, principal: Principal,
                service_id: UUID) -> type[Route] | type[PublicRoute]:
    """Which shape the caller may read, or NotFound if the service is not theirs to see."""
    service = await repo.service_for_read(conn, service_id, principal.user_id)
    if principal.platform_admin or service["is_maintainer"]:
        return Route
    if service["status"] in PUBLIC_STATUSES:
        return PublicRoute
    raise NotFound("No such service")  # a pending or rejected service stays unknown to others


@endpoint("GET", "/services/{service_id}/routes", summary="List a service's service-wide routes",
          tag=TAG, query=ListQuery, response=page_of(RouteView))
async def list_service_routes(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        view = await _view(conn, principal, call["service_id"])
        result = await repo.list_routes(conn, call["service_id"], None,
                                        page_request(call.query.limit, call.query.cursor))
    return {**result, "items": [view.model_validate(row) for row in result["items"]]}


@endpoint("POST", "/services/{service_id}/routes", summary="Add a service-wide route", tag=TAG,
          body=RouteCreate, response=Route, status=201, errors=(403, 409, 422))
async def create_service_route(call: Call[RouteCreate, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    await check_urls_as_maintainer(call.request, principal, call["service_id"],
                                   route_upstream_urls(call.body.values()))
    async with transaction(call.request, principal) as conn:
        service = await services_repo.lock_for_write(conn, call["service_id"], principal.user_id)
        can_maintain(principal, service)
        return await create(conn, call["service_id"], None, call.body, service["api_base_url"])


@endpoint("GET", "/services/{service_id}/routes/{route_id}", summary="Read a service-wide route",
          tag=TAG, response=RouteView)
async def get_service_route(call: Call[None, None]) -> Route | PublicRoute:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        view = await _view(conn, principal, call["service_id"])
        return view.model_validate(await repo.get_route(conn, call["route_id"], call["service_id"], None))


@endpoint("PATCH", "/services/{service_id}/routes/{route_id}", summary="Change a service-wide route",
          tag=TAG, body=RoutePatch, response=Route, errors=(403, 409, 422))
async def patch_service_route(call: Call[RoutePatch, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    await check_urls_as_maintainer(call.request, principal, call["service_id"],
                                   route_upstream_urls(call.body.values()))
    async with transaction(call.request, principal) as conn:
        service = await services_repo.lock_for_write(conn, call["service_id"], principal.user_id)
        can_maintain(principal, service)
        return await patch(conn, call["route_id"], call["service_id"], None, call.body,
                           service["api_base_url"])


@endpoint("DELETE", "/services/{service_id}/routes/{route_id}", summary="Delete a service-wide route",
          tag=TAG, status=204, errors=(403,))
async def delete_service_route(call: Call[None, None]) -> None:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await services_repo.lock_for_write(conn, call["service_id"], principal.user_id))
        await repo.delete_route(conn, call["route_id"], call["service_id"], None)
