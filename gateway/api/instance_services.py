"""/spaces/{space_id}/instances/{instance_id}/services: what runs on an instance.

Discovery reports the whole set with `PUT .../services`; people add, change and remove single
services with the other verbs. `management_plugin_id` is not written here: it follows the
service's management assignments (gateway/api/assignments.py).
"""

from __future__ import annotations

from typing import Any

from db import instance_services as repo
from db import instances, scopes
from db.pagination import page_request
from gateway.api.caller import require_space_role, transaction
from gateway.api.models.common import page_of
from gateway.api.models.instance_services import (
    InstanceService, InstanceServiceCreate, InstanceServicePatch, InstanceServiceQuery, InstanceServiceView,
)
from gateway.api.registry import Call, endpoint
from gateway.errors import ValidationFailed

TAG = "infrastructure"
PATH = "/spaces/{space_id}/instances/{instance_id}/services"


def refuse_duplicates(items: list[InstanceServiceCreate]) -> None:
    """One entry per (name, type): two would be two different answers for the same row."""
    first: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        earlier = first.setdefault((item.name, item.type), index)
        if earlier != index:
            raise ValidationFailed([{"field": f"{index}.name",
                                     "message": f"repeats the name and type of item {earlier}"}])


@endpoint("GET", PATH, summary="List an instance's services, newest discovered first", tag=TAG,
          query=InstanceServiceQuery, response=page_of(InstanceServiceView))
async def list_services(call: Call[None, InstanceServiceQuery]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "viewer")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await scopes.live_instance(conn, call["space_id"], call["instance_id"])
        return await repo.list_services(conn, call["instance_id"], managed=call.query.managed,
                                        request=page_request(call.query.limit, call.query.cursor))


@endpoint("POST", PATH, summary="Add a service to an instance", tag=TAG, body=InstanceServiceCreate,
          response=InstanceService, status=201, errors=(403, 409, 422))
async def create_service(call: Call[InstanceServiceCreate, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await scopes.live_instance(conn, call["space_id"], call["instance_id"])
        return await repo.create_service(conn, call["instance_id"], call.body.model_dump(exclude_unset=True))


@endpoint("PUT", PATH, summary="Discovery sync: upsert the listed services, stop the others", tag=TAG,
          body=list[InstanceServiceCreate], response=page_of(InstanceService), errors=(403, 422))
async def sync_services(call: Call[list[InstanceServiceCreate], None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    refuse_duplicates(call.body)
    items = [item.model_dump(exclude_unset=True) for item in call.body]
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await instances.lock_instance(conn, call["space_id"], call["instance_id"])
        # The whole set in one answer: the caller asked about all of them.
        return {"items": await repo.sync_services(conn, call["instance_id"], items), "next_cursor": None}


@endpoint("PATCH", PATH + "/{service_id}", summary="Change a service of an instance", tag=TAG,
          body=InstanceServicePatch, response=InstanceService, errors=(403, 409, 422))
async def patch_service(call: Call[InstanceServicePatch, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await scopes.live_instance(conn, call["space_id"], call["instance_id"])
        return await repo.update_service(conn, call["instance_id"], call["service_id"],
                                         call.body.model_dump(exclude_unset=True))


@endpoint("DELETE", PATH + "/{service_id}", summary="Remove a service from an instance", tag=TAG,
          status=204, errors=(403,))
async def delete_service(call: Call[None, None]) -> None:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await scopes.live_instance(conn, call["space_id"], call["instance_id"])
        await repo.delete_service(conn, call["instance_id"], call["service_id"])
