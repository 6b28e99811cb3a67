"""/spaces/{space_id}/api-keys: machine credentials of a space, shown once at creation."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from auth.api_keys import hash_api_key, new_api_key
from auth.principal import Principal, role_meets
from db import api_keys as repo
from db.pagination import page_request
from gateway.api.caller import authenticate, require_space_role, transaction
from gateway.api.models.api_keys import ApiKey, ApiKeyCreate, ApiKeyCreated
from gateway.api.models.common import ListQuery, page_of
from gateway.api.registry import Call, endpoint
from gateway.errors import Forbidden

TAG = "api-keys"
BASE = "/spaces/{space_id}/api-keys"


async def require_key_manager(request: web.Request, space_id: UUID) -> tuple[Principal, str]:
    """Space owners and admins, and platform admins; never an API key, so keys cannot mint keys."""
    if (await authenticate(request)).is_api_key:
        raise Forbidden("API keys cannot list, create or revoke API keys")
    return await require_space_role(request, space_id, "admin")


@endpoint("GET", BASE, summary="List the space's live API keys", tag=TAG,
          query=ListQuery, response=page_of(ApiKey), errors=(403,))
async def list_api_keys(call: Call[None, ListQuery]) -> dict[str, Any]:
    principal, _ = await require_key_manager(call.request, call["space_id"])
    request = page_request(call.query.limit, call.query.cursor)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        return await repo.list_keys(conn, call["space_id"], request)


@endpoint("POST", BASE, summary="Create an API key (the key is shown this once)", tag=TAG,
          body=ApiKeyCreate, response=ApiKeyCreated, status=201, errors=(403,))
async def create_api_key(call: Call[ApiKeyCreate, None]) -> dict[str, Any]:
    principal, role = await require_key_manager(call.request, call["space_id"])
    if not role_meets(role, call.body.role):
        raise Forbidden(f"You cannot create a key with a role above your own ({role})")
    key, prefix = new_api_key()
    async with transaction(call.request, principal, call["space_id"]) as conn:
        row = await repo.create_key(conn, call["space_id"], name=call.body.name, role=call.body.role,
                                    prefix=prefix, key_hash=hash_api_key(key), created_by=principal.user_id)
    return {**row, "key": key}


@endpoint("DELETE", BASE + "/{key_id}", summary="Revoke an API key", tag=TAG, status=204, errors=(403,))
async def revoke_api_key(call: Call[None, None]) -> None:
    principal, _ = await require_key_manager(call.request, call["space_id"])
    async with transaction(call.request, principal, call["space_id"]) as conn:
        await repo.revoke_key(conn, call["space_id"], call["key_id"])
