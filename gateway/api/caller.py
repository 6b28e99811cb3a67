"""Authenticate API callers and check their rights, as the contract's authorization table says."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg
from aiohttp import web

from auth.principal import Principal, role_meets
from db import callers
from db.pool import Database
from gateway.appkeys import DB, JWT
from gateway.auth_failures import identify_request
from gateway.errors import Forbidden, NotFound
from gateway.middleware import request_id_of
from gateway.proxy.key_hashes import KeyHashes, Verdict
from gateway.proxy.runtime import PROXY

PRINCIPAL: Final = web.RequestKey("principal", Principal)


@dataclass(frozen=True, slots=True)
class DirectLookups:
    """Users and keys from PostgreSQL, not the proxy's caches: a key revoked a moment ago must
    already be refused by the API that revoked it. Only the in-memory key hashes are consulted
    first, so that a key no node knows is refused without a query."""

    db: Database
    key_hashes: KeyHashes | None

    async def user_exists(self, user_id: UUID) -> bool:
        return await callers.user_exists(self.db.require(), user_id)

    async def api_key(self, key_hash: bytes) -> callers.ApiKeyIdentity | None:
        if self.key_hashes is not None and (await self.key_hashes.lookup(key_hash))[0] is Verdict.UNKNOWN:
            return None
        return await callers.api_key_by_hash(self.db.require(), key_hash)


async def authenticate(request: web.Request) -> Principal:
    """The caller of this request (computed once per request): 401, or 429 for a client address
    past GATEWAY_AUTH_FAILURES_PER_MINUTE failed credentials (counted with the proxy's)."""
    cached: Principal | None = request.get(PRINCIPAL)
    if cached is not None:
        return cached
    runtime = request.app.get(PROXY)
    lookups = DirectLookups(request.app[DB], None if runtime is None else runtime.callers.key_hashes)
    principal = await identify_request(request, request.app[JWT], lookups,
                                       None if runtime is None else runtime.callers.failures)
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


def transaction(request: web.Request, principal: Principal,
                space_id: UUID | None = None) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """The request's one transaction, carrying the caller for row-level security and audit."""
    return request.app[DB].transaction(
        user_id=principal.user_id, space_id=space_id or principal.api_key_space_id,
        platform_admin=principal.platform_admin, api_key_id=principal.api_key_id,
        request_id=request_id_of(request))
