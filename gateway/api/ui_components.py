"""/services/{service_id}/ui-components and /spaces/{space_id}/ui-components.

A service's components are read like the service (anyone, once it is public) and written by its
maintainers; a space lists what its active installations contribute, filtered by the caller's
permissions.
"""

from __future__ import annotations

from typing import Any

from auth.principal import PLATFORM_ADMIN
from db import services as services_repo
from db import ui_components as repo
from db.pagination import page_request
from gateway.api.caller import authenticate, require_space_role, space_role, transaction
from gateway.api.models.common import ListQuery, page_of
from gateway.api.models.ui_components import ComponentCreate, ComponentPatch, SpaceComponentQuery, UiComponent
from gateway.api.registry import Call, endpoint
from gateway.api.services import can_maintain

TAG = "ui components"
PATH = "/services/{service_id}/ui-components"


@endpoint("GET", PATH, summary="List a service's UI components", tag=TAG, query=ListQuery,
          response=page_of(UiComponent))
async def list_service_components(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        await services_repo.get_visible(conn, call["service_id"], admin=principal.platform_admin,
                                        user_id=principal.user_id)
        return await repo.list_for_service(conn, call["service_id"],
                                           page_request(call.query.limit, call.query.cursor))


@endpoint("POST", PATH, summary="Add a UI component to a service", tag=TAG, body=ComponentCreate,
          response=UiComponent, status=201, errors=(403, 422))
async def create_component(call: Call[ComponentCreate, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await services_repo.lock_for_write(conn, call["service_id"], principal.user_id))
        return await repo.create(conn, call["service_id"], call.body.model_dump(exclude_unset=True))


@endpoint("GET", PATH + "/{component_id}", summary="Read a UI component", tag=TAG, response=UiComponent)
async def get_component(call: Call[None, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        await services_repo.get_visible(conn, call["service_id"], admin=principal.platform_admin,
                                        user_id=principal.user_id)
        return await repo.get_for_service(conn, call["component_id"], call["service_id"])


@endpoint("PATCH", PATH + "/{component_id}", summary="Change a UI component", tag=TAG,
          body=ComponentPatch, response=UiComponent, errors=(403, 422))
async def patch_component(call: Call[ComponentPatch, None]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await services_repo.lock_for_write(conn, call["service_id"], principal.user_id))
        return await repo.update(conn, call["component_id"], call["service_id"],
                                 call.body.model_dump(exclude_unset=True))


@endpoint("DELETE", PATH + "/{component_id}", summary="Delete a UI component", tag=TAG, status=204,
          errors=(403,))
async def delete_component(call: Call[None, None]) -> None:
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        can_maintain(principal, await services_repo.lock_for_write(conn, call["service_id"], principal.user_id))
        await repo.delete(conn, call["component_id"], call["service_id"])


@endpoint("GET", "/spaces/{space_id}/ui-components",
          summary="List the UI components of a space's active installations", tag=TAG,
          query=SpaceComponentQuery, response=page_of(UiComponent), errors=(403,))
async def list_space_components(call: Call[None, SpaceComponentQuery]) -> dict[str, Any]:
    principal, role = await require_space_role(call.request, call["space_id"], "viewer")
    held = [role]
    if principal.platform_admin:
        # require_space_role lets platform admins act as owners; for `required_permissions` they
        # hold what they are: platform_admin, plus their real role if they are a member.
        real = await space_role(call.request, principal, call["space_id"])
        held = [PLATFORM_ADMIN] + ([real] if real else [])
    q = call.query
    async with transaction(call.request, principal, call["space_id"]) as conn:
        return await repo.list_for_space(conn, call["space_id"], placement=q.placement, permissions=held,
                                         request=page_request(q.limit, q.cursor))
