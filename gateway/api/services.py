"""/services: the marketplace registry, its status workflow and maintainers."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from auth.principal import Principal
from db import routes as routes_repo
from db import services as repo
from db.errors import Conflict
from db.pagination import page_request
from gateway.api.caller import authenticate, require_platform_admin, require_user, transaction
from gateway.api.models.common import page_of
from gateway.api.models.services import (
    Service, ServiceCreate, ServiceHealth, ServiceListQuery, ServicePatch, StatusChange,
)
from gateway.api.registry import Call, endpoint
from gateway.appkeys import SETTINGS
from gateway.errors import Forbidden, NotFound, ServiceUnavailable, ValidationFailed
from gateway.proxy.runtime import PROXY
from gateway.redis_link import RedisUnavailable
from gateway.upstream_safety import UnsafeUpstream, check_registration_url

TAG = "services"

# Allowed status changes; anything else is a 409.
TRANSITIONS = {
    ("pending", "approved"), ("pending", "rejected"), ("rejected", "approved"),
    ("approved", "deprecated"), ("deprecated", "approved"),
}


def upstream_urls(values: dict[str, Any]) -> dict[str, str]:
    """The URLs of a service body that the proxy will call, by field."""
    urls = {"api_base_url": values.get("api_base_url"),
            "api_auth_config.token_url": (values.get("api_auth_config") or {}).get("token_url"),
            "capabilities.webhook_url": (values.get("capabilities") or {}).get("webhook_url")}
    return {field: url for field, url in urls.items() if url}


async def check_urls(request: web.Request, urls: dict[str, str]) -> None:
    """Registration-time upstream safety for the URLs the proxy will call (422 naming the field).

    It may resolve names: call it only once the caller's rights are checked, and never while a
    transaction is open (a slow name would hold the connection, and any row lock, meanwhile).
    """
    allow = request.app[SETTINGS].allow_private_upstreams
    for field, url in urls.items():
        try:
            await check_registration_url(url, allow_private=allow)
        except UnsafeUpstream as exc:
            raise ValidationFailed([{"field": field, "message": str(exc)}]) from None


async def check_urls_as_maintainer(request: web.Request, principal: Principal, service_id: UUID,
                                   urls: dict[str, str]) -> None:
    """`check_urls` for a change to an existing service, once the caller is known to maintain it.

    Rights first, in a short read-only transaction of its own: a stranger must not make the
    gateway resolve names for them, and no name is resolved while a transaction (or a row lock)
    is held. The write that follows checks the rights again, on the locked row.
    """
    if not urls or request.app[SETTINGS].allow_private_upstreams:
        return  # nothing will be resolved
    async with transaction(request, principal) as conn:
        can_maintain(principal, await routes_repo.service_for_read(conn, service_id, principal.user_id))
    await check_urls(request, urls)


def can_maintain(principal: Principal, row: dict[str, Any]) -> None:
    if principal.platform_admin or row["is_maintainer"]:
        return
    if row["status"] not in ("approved", "deprecated"):
        raise NotFound("No such service")  # others may not even learn that it exists
    raise Forbidden("Only the service's maintainers may change it")


@endpoint("GET", "/services", summary="List services", tag=TAG,
          query=ServiceListQuery, response=page_of(Service))
async def list_services(call: Call[None, ServiceListQuery]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    q = call.query
    async with transaction(call.request, principal) as conn:
        return await repo.list_services(
            conn, admin=principal.platform_admin, user_id=principal.user_id, category=q.category,
            status=q.status, verified=q.verified, q=q.q, request=page_request(q.limit, q.cursor))


@endpoint("POST", "/services", summary="Register a service (starts pending)", tag=TAG,
          body=ServiceCreate, response=Service, status=201, errors=(403, 409, 422))  # 403: an API key
async def create_service(call: Call[ServiceCreate, None]) -> dict[str, Any]:
    principal = await require_user(call.request)
    values = call.body.model_dump(exclude_unset=True)
    await check_urls(call.request, upstream_urls(values))  # any user may register: rights are met
    async with transaction(call.request, principal) as conn:
        assert principal.user_id is not None
        return await repo.create_service(conn, values, principal.user_id)


@endpoint("GET", "/services/{service_id}", summary="Read a service", tag=TAG, response=Service)
async def get_service(call: Call[None, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        return await repo.get_visible(conn, call["service_id"], admin=principal.platform_admin,
                                      user_id=principal.user_id)


@endpoint("PATCH", "/services/{service_id}", summary="Change a service", tag=TAG,
          body=ServicePatch, response=Service, errors=(403, 422))
async def patch_service(call: Call[ServicePatch, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    values = call.body.model_dump(exclude_unset=True)
    if {"verified", "security_audit"} & values.keys() and not principal.platform_admin:
        raise Forbidden("Only platform admins may set verified or security_audit")
    await check_urls_as_maintainer(call.request, principal, call["service_id"], upstream_urls(values))
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await repo.lock_for_write(conn, call["service_id"], principal.user_id))
        if "api_base_url" in values and values["api_base_url"] is None \
                and await repo.has_relative_routes(conn, call["service_id"]):
            raise ValidationFailed([{"field": "api_base_url", "message":
                                     "routes of this service use targets relative to it; it cannot be removed"}])
        return await repo.update_service(conn, call["service_id"], values)


@endpoint("DELETE", "/services/{service_id}", summary="Delete a service (soft; its slug stays taken)",
          tag=TAG, status=204, errors=(403,))
async def delete_service(call: Call[None, None]) -> None:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await repo.lock_for_write(conn, call["service_id"], principal.user_id))
        await repo.soft_delete(conn, call["service_id"])


@endpoint("PUT", "/services/{service_id}/status", summary="Approve, reject or deprecate a service",
          tag=TAG, body=StatusChange, response=Service, errors=(403, 409))
async def change_status(call: Call[StatusChange, None]) -> dict[str, Any]:
    principal = await require_platform_admin(call.request)
    async with transaction(call.request, principal) as conn:
        row = await repo.lock_for_write(conn, call["service_id"], principal.user_id)
        if (row["status"], call.body.status) not in TRANSITIONS:
            raise Conflict(f"A {row['status']} service cannot become {call.body.status}")
        return await repo.set_status(conn, call["service_id"], call.body.status, call.body.reason)


@endpoint("PUT", "/services/{service_id}/maintainers/{user_id}", summary="Add a maintainer",
          tag=TAG, status=204, errors=(403, 404))
async def add_maintainer(call: Call[None, None]) -> None:
    principal = await require_platform_admin(call.request)
    async with transaction(call.request, principal) as conn:
        await repo.lock_for_write(conn, call["service_id"], principal.user_id)
        await repo.add_maintainer(conn, call["service_id"], call["user_id"])


@endpoint("DELETE", "/services/{service_id}/maintainers/{user_id}", summary="Remove a maintainer",
          tag=TAG, status=204, errors=(403, 404))
async def remove_maintainer(call: Call[None, None]) -> None:
    principal = await require_platform_admin(call.request)
    async with transaction(call.request, principal) as conn:
        await repo.lock_for_write(conn, call["service_id"], principal.user_id)
        if not await repo.remove_maintainer(conn, call["service_id"], call["user_id"]):
            raise NotFound("This user is not a maintainer of the service")


@endpoint("DELETE", "/services/{service_id}/cache", summary="Drop every cached answer of the service",
          tag=TAG, status=204, errors=(403, 503))
async def purge_cache(call: Call[None, None]) -> None:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await repo.lock_for_write(conn, call["service_id"], principal.user_id))
        await repo.notify_cache_purge(conn, call["service_id"])
    try:
        await call.request.app[PROXY].cache.purge_service(call["service_id"])
    except RedisUnavailable:
        raise ServiceUnavailable("The shared cache cannot be purged right now") from None


@endpoint("GET", "/services/{service_id}/health", summary="How the service's installations fare (counts only)",
          tag=TAG, response=ServiceHealth, errors=(403,))
async def service_health(call: Call[None, None]) -> dict[str, Any]:
    """For the service's maintainers and platform admins: installations by verdict across every
    space, and this process's open breakers. Counts only, never a space's ids."""
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        row = await repo.read_for_maintainer(conn, call["service_id"], principal.user_id)
        if not (principal.platform_admin or row["is_maintainer"]):
            if row["status"] not in ("approved", "deprecated"):
                raise NotFound("No such service")  # others may not even learn that it exists
            raise Forbidden("Only the service's maintainers may see its health")
        counts = await repo.service_health(conn, call["service_id"])
    return {"service_id": row["id"], "health_check": (row["capabilities"] or {}).get("health_check"),
            "installations": counts, "open_breakers": call.request.app[PROXY].breakers.open_for_service(row["slug"])}
