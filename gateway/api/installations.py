"""/spaces/{space_id}/installations: plugins installed in a space, their config and credentials."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from db import installations as repo
from db.encryption import associated_data
from db.pagination import page_request
from gateway.api.caller import require_space_role, transaction
from gateway.api.models.common import ListQuery, page_of
from gateway.api.models.installations import Installation, InstallationCreate, InstallationPatch
from gateway.api.registry import Call, endpoint
from gateway.appkeys import KEYRING
from gateway.proxy.runtime import PROXY
from gateway.errors import ValidationFailed

TAG = "installations"
BASE = "/spaces/{space_id}/installations"
ONE = BASE + "/{installation_id}"


def seal_credentials(request: web.Request, installation_id: UUID, credentials: dict[str, str]) -> dict[str, Any]:
    """The envelope for one installation row; the associated data ties it to that row."""
    aad = associated_data("service_installations", installation_id, "credentials")
    return request.app[KEYRING].seal(credentials, aad)


def with_breaker(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    """The answering process's breaker state next to the row's health columns."""
    row["breaker_open"] = request.app[PROXY].breakers.open_count(row["id"]) > 0
    return row


def service_reference(body: InstallationCreate) -> None:
    if body.service_id is None and body.slug is None:
        raise ValidationFailed([{"field": "service_id", "message": "send service_id or slug"}])
    if body.service_id is not None and body.slug is not None:
        raise ValidationFailed([{"field": "slug", "message": "send either service_id or slug, not both"}])


@endpoint("GET", BASE, summary="List the space's installations", tag=TAG,
          query=ListQuery, response=page_of(Installation), errors=(403,))
async def list_installations(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "viewer")
    request = page_request(call.query.limit, call.query.cursor)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        listed = await repo.list_installations(conn, call["space_id"], request)
    listed["items"] = [with_breaker(call.request, row) for row in listed["items"]]
    return listed


@endpoint("POST", BASE, summary="Install an approved service in the space", tag=TAG,
          body=InstallationCreate, response=Installation, status=201, errors=(403, 409, 422))
async def install(call: Call[InstallationCreate, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    body = call.body
    service_reference(body)
    values = {"config": body.config, "permissions": body.permissions.model_dump(exclude_unset=True),
              "status": body.status}
    async with transaction(call.request, principal, call["space_id"]) as conn:
        service = await repo.lock_installable_service(
            conn, service_id=body.service_id, slug=body.slug,
            admin=principal.platform_admin, user_id=principal.user_id)
        return await repo.install(
            conn, service, call["space_id"], installed_by=principal.user_id, values=values,
            seal=lambda row_id: seal_credentials(call.request, row_id, body.credentials))


@endpoint("GET", ONE, summary="Read an installation", tag=TAG, response=Installation, errors=(403,))
async def get_installation(call: Call[None, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "viewer")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        return with_breaker(call.request, await repo.get_installation(conn, call["space_id"], call["installation_id"]))


@endpoint("PATCH", ONE, summary="Configure an installation (config and credentials are replaced whole)",
          tag=TAG, body=InstallationPatch, response=Installation, errors=(403, 422))
async def patch_installation(call: Call[InstallationPatch, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    values = call.body.model_dump(exclude_unset=True)  # nested too: `{"permissions": {}}` stays {}
    if "credentials" in values:
        values["credentials"] = seal_credentials(call.request, call["installation_id"], values["credentials"])
    async with transaction(call.request, principal, call["space_id"]) as conn:
        updated = await repo.update_installation(conn, call["space_id"], call["installation_id"], values)
    return with_breaker(call.request, updated)


@endpoint("DELETE", ONE, summary="Uninstall (soft delete; reinstalling revives it)", tag=TAG,
          status=204, errors=(403,))
async def uninstall(call: Call[None, None]) -> None:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await repo.uninstall(conn, call["space_id"], call["installation_id"])
