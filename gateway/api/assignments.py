"""/spaces/{space_id}/instance-services/{service_id}/assignments: which plugins manage a service.

The service's `management_plugin_id` follows the most recent active assignment (db/assignments.py
keeps it current); assignment credentials are write-only, shown as `credential_keys`.
"""

from __future__ import annotations

import uuid
from typing import Any

from db import assignments as repo
from db import scopes
from db.encryption import associated_data, credential_keys
from db.pagination import page_request
from gateway.api.caller import require_space_role, transaction
from gateway.api.models.assignments import Assignment, AssignmentCreate
from gateway.api.models.common import ListQuery, page_of
from gateway.api.registry import Call, endpoint
from gateway.appkeys import KEYRING

TAG = "infrastructure"
PATH = "/spaces/{space_id}/instance-services/{service_id}/assignments"


def present(row: dict[str, Any]) -> dict[str, Any]:
    view = dict(row)
    view["credential_keys"] = credential_keys(view.pop("credentials", None))
    return view


@endpoint("GET", PATH, summary="List a service's management assignments", tag=TAG,
          query=ListQuery, response=page_of(Assignment))
async def list_assignments(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "viewer")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await scopes.instance_service_in_space(conn, call["space_id"], call["service_id"])
        result = await repo.list_assignments(conn, call["service_id"],
                                             page_request(call.query.limit, call.query.cursor))
    return {**result, "items": [present(row) for row in result["items"]]}


@endpoint("POST", PATH, summary="Assign a management plugin to a service", tag=TAG,
          body=AssignmentCreate, response=Assignment, status=201, errors=(403, 409, 422))
async def create_assignment(call: Call[AssignmentCreate, None]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    assignment_id = uuid.uuid4()  # before the INSERT, so the credentials' associated data can name it
    values = call.body.model_dump(exclude_unset=True)
    if "credentials" in values:
        aad = associated_data("service_management_assignments", assignment_id, "credentials")
        values["credentials"] = call.request.app[KEYRING].seal(values["credentials"], aad)
    values.update(id=assignment_id, instance_service_id=call["service_id"], assigned_by=principal.user_id)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await repo.lock_instance_service(conn, call["space_id"], call["service_id"])
        row = await repo.create_assignment(conn, call["space_id"], values)
    # The plugin id, not the row id, names an assignment in its URL.
    call.location = f"{call.request.path}/{row['plugin_id']}"
    return present(row)


@endpoint("DELETE", PATH + "/{plugin_id}", summary="Remove a management assignment", tag=TAG,
          status=204, errors=(403,))
async def delete_assignment(call: Call[None, None]) -> None:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await repo.lock_instance_service(conn, call["space_id"], call["service_id"])
        await repo.delete_assignment(conn, call["service_id"], call["plugin_id"])
