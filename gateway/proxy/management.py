"""The management proxy (contract revision 3): `/spaces/{space}/instance-services/{id}/manage/...`
calls the management plugin assigned to an instance service.

It is the plugin proxy's pipeline with another authorize stage (`authorize_management`): the
instance service must be the space's and have an active assignment whose plugin is installed
(active) in the space (else 404); the caller must be a space owner or admin (or an API key of
the space with such a role) whose role also meets the installation's `min_role` (else 403).
Then the plugin's routes, limits, cache (keyed by the instance service too), breaker and
forwarding apply as for `/plugins/{slug}/...`, with the assignment's credentials when it has
any. Everything is served from memory (the route table's load); `last_used` of an assignment is
written in the background, at most once a minute per assignment.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from auth.principal import role_meets
from gateway.errors import Forbidden, NotFound
from gateway.proxy.context import ProxyContext
from gateway.proxy.runtime import runtime_of

MANAGING_ROLE: Final = "admin"  # owners and admins


async def authorize_management(ctx: ProxyContext) -> None:
    principal, state = ctx.principal, ctx.state
    assert principal is not None and ctx.instance_service_id is not None
    rt = runtime_of(ctx.request)
    if principal.is_api_key:
        role = principal.api_key_role if principal.api_key_space_id == ctx.space_id else None
    else:
        assert principal.user_id is not None
        role = await rt.callers.role(ctx.space_id, principal.user_id)
    if role is None:
        raise Forbidden("You are not a member of this space")
    if not role_meets(role, MANAGING_ROLE):
        raise Forbidden("Managing infrastructure needs the space role 'admin' or higher")
    assignment = state.assignment(ctx.space_id, ctx.instance_service_id)
    installation = state.installation_of(ctx.space_id, assignment.plugin_id) if assignment else None
    if assignment is None or installation is None or installation.status != "active":
        raise NotFound("This instance service has no active management plugin installed in this space")
    if not role_meets(role, installation.min_role):
        raise Forbidden(f"Calling this plugin needs the space role '{installation.min_role}' or higher")
    if assignment.credentials:  # the assignment's credentials as a whole, else the installation's
        installation = dataclasses.replace(
            installation, credentials=assignment.credentials,
            sealed_in=("service_management_assignments", assignment.id),
            version=f"{installation.version}|{assignment.version}")
    ctx.slug, ctx.role, ctx.installation, ctx.management = installation.service_slug, role, installation, assignment
    rt.assignment_touches.used(assignment.id)
