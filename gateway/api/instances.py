"""/spaces/{space_id}/instances: the space's infrastructure records.

`connection_config` is for owners, admins and platform admins only; its `secrets` member is
encrypted at rest and write-only (responses name the secrets in `secret_keys`).
"""

from __future__ import annotations

import uuid
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from auth.principal import role_meets
from db import instances as repo
from db.encryption import associated_data, credential_keys
from db.pagination import page_request
from gateway.api.caller import require_space_role, transaction
from gateway.api.models.common import ListQuery, page_of
from gateway.api.models.instances import InstanceCreate, InstancePatch, InstanceView
from gateway.api.registry import Call, endpoint
from gateway.appkeys import KEYRING

TAG = "infrastructure"
PATH = "/spaces/{space_id}/instances"
SECRETS: Final = "secrets"


def seal_connection_config(request: web.Request, instance_id: UUID, config: dict[str, Any] | None,
                           stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The connection_config to store: `secrets` sealed to this row; when the caller left
    `secrets` out, the stored envelope is kept (a PATCH need not resend every password)."""
    if config is None:
        return None
    config = dict(config)
    envelope: dict[str, Any] | None
    if SECRETS in config:
        aad = associated_data("infrastructure_instances", instance_id, "connection_config.secrets")
        envelope = request.app[KEYRING].seal(config.pop(SECRETS), aad)
    else:
        envelope = (stored or {}).get(SECRETS)
    if envelope:
        config[SECRETS] = envelope
    return config


def present(row: dict[str, Any], show_connection: bool) -> dict[str, Any]:
    """The row as this caller may see it: without `connection_config` for members and viewers,
    and never with the secrets envelope (only its key names)."""
    view = dict(row)
    config = view.pop("connection_config", None)
    if show_connection:
        view["connection_config"] = None if config is None else {
            key: value for key, value in config.items() if key != SECRETS}
        view["secret_keys"] = credential_keys((config or {}).get(SECRETS))
    return view


@endpoint("GET", PATH, summary="List the space's instances", tag=TAG,
          query=ListQuery, response=page_of(InstanceView))
async def list_instances(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal, role = await require_space_role(call.request, call["space_id"], "viewer")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        result = await repo.list_instances(conn, call["space_id"], page_request(call.query.limit, call.query.cursor))
    show = role_meets(role, "admin")
    return {**result, "items": [present(row, show) for row in result["items"]]}


@endpoint("POST", PATH, summary="Record an instance", tag=TAG, body=InstanceCreate,
          response=InstanceView, status=201, errors=(403, 422))
async def create_instance(call: Call[InstanceCreate, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    instance_id = uuid.uuid4()  # before the INSERT, so the secrets' associated data can name it
    values = call.body.model_dump(exclude_unset=True)
    if "connection_config" in values:
        values["connection_config"] = seal_connection_config(
            call.request, instance_id, values["connection_config"], None)
    values.update(id=instance_id, space_id=call["space_id"], created_by=principal.user_id)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        return present(await repo.create_instance(conn, values), True)


@endpoint("GET", PATH + "/{instance_id}", summary="Read an instance", tag=TAG, response=InstanceView)
async def get_instance(call: Call[None, None]) -> dict[str, Any]:
    principal, role = await require_space_role(call.request, call["space_id"], "viewer")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        row = await repo.get_instance(conn, call["space_id"], call["instance_id"])
    return present(row, role_meets(role, "admin"))


@endpoint("PATCH", PATH + "/{instance_id}", summary="Change an instance", tag=TAG,
          body=InstancePatch, response=InstanceView, errors=(403, 422))
async def patch_instance(call: Call[InstancePatch, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    values = call.body.model_dump(exclude_unset=True)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        stored = await repo.lock_instance(conn, call["space_id"], call["instance_id"])
        if "connection_config" in values:
            values["connection_config"] = seal_connection_config(
                call.request, call["instance_id"], values["connection_config"], stored["connection_config"])
        return present(await repo.update_instance(conn, call["space_id"], call["instance_id"], values), True)


@endpoint("DELETE", PATH + "/{instance_id}", summary="Delete an instance (soft)", tag=TAG,
          status=204, errors=(403,))
async def delete_instance(call: Call[None, None]) -> None:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await repo.soft_delete(conn, call["space_id"], call["instance_id"])
