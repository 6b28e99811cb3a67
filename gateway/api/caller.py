"""Authenticate API callers and check their rights, as the contract's authorization table says."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from aiohttp import web

from auth.api_keys import hash_api_key
from auth.credentials import credential_from_headers
from auth.principal import PLATFORM_ADMIN, Principal, role_meets
from db import callers
from gateway.appkeys import DB, JWT
from gateway.errors import Forbidden, NotFound, Unauthenticated

PRINCIPAL: Final = web.RequestKey("principal", Principal)


async def authenticate(request: web.Request) -> Principal:
    """The caller of this request (computed once per request)."""
    cached: Principal | None = request.get(PRINCIPAL)
    if cached is not None:
        return cached
    credential = credential_from_headers(request.headers)
    pool = request.app[DB].require()
    if credential.kind == "api_key":
        key = await callers.api_key_by_hash(pool, hash_api_key(credential.value))
        if key is None:
            raise Unauthenticated("Unknown or revoked API key")
        principal = Principal(None, api_key_id=key.id, api_key_space_id=key.space_id, api_key_role=key.role)
    else:
        claims = await request.app[JWT].verify_async(credential.value)
        user_id = UUID(str(claims["sub"]))
        if not await callers.user_exists(pool, user_id):
            raise Unauthenticated("Unknown user")
        roles = claims.get("roles")
        principal = Principal(user_id, platform_admin=isinstance(roles, list) and PLATFORM_ADMIN in roles)
    request[PRINCIPAL] = principal
    return principal


async def space_role(request: web.Request, principal: Principal, space_id: UUID) -> str | None:
    """The caller's role in the space: an API key's own role, a user's membership, or None."""
    if principal.is_api_key:
        return principal.api_key_role if principal.api_key_space_id == space_id else None
    assert principal.user_id is not None
    return await callers.space_role(request.app[DB].require(), space_id, principal.user_id)


async def require_space_role(request: web.Request, space_id: UUID, minimum: str) -> tuple[Principal, str]:
    """Allow members of the space whose role meets `minimum`, and platform admins.

    Non-members get 403: the space id is in the path already, so this reveals nothing.
    Returns the caller and the role to judge by (platform admins act as `owner`).
    """
    principal = await authenticate(request)
    if principal.platform_admin:
        # Members learn nothing from a 404 here; for admins it tells a typo from an empty space.
        if not await callers.space_exists(request.app[DB].require(), space_id):
            raise NotFound("No such space")
        return principal, "owner"
    role = await space_role(request, principal, space_id)
    if role is None:
        raise Forbidden("You are not a member of this space")
    if not role_meets(role, minimum):
        raise Forbidden(f"This needs the space role '{minimum}' or higher")
    return principal, role


async def require_user(request: web.Request) -> Principal:
    """Actions only a person may take (creating a service): API keys are refused."""
    principal = await authenticate(request)
    if principal.is_api_key:
        raise Forbidden("This action needs a user, not an API key")
    return principal


async def require_platform_admin(request: web.Request) -> Principal:
    principal = await authenticate(request)
    if not principal.platform_admin:
        raise Forbidden("Only platform admins may do this")
    return principal


def transaction(request: web.Request, principal: Principal, space_id: UUID | None = None):  # type: ignore[no-untyped-def]
    """The request's one transaction, carrying the caller for row-level security and audit."""
    return request.app[DB].transaction(
        user_id=principal.user_id, space_id=space_id or principal.api_key_space_id)
