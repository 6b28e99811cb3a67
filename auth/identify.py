"""Turn a request's credential into a Principal. Shared by the API and the proxy, which differ
only in where they look users and keys up (the API asks PostgreSQL, the proxy its caches)."""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from multidict import CIMultiDictProxy

from auth.api_keys import hash_api_key
from auth.credentials import credential_from_headers
from auth.errors import Unauthenticated
from auth.jwt import JwtVerifier
from auth.principal import PLATFORM_ADMIN, Principal
from db.callers import ApiKeyIdentity


class CallerLookups(Protocol):
    async def user_exists(self, user_id: UUID) -> bool: ...

    async def api_key(self, key_hash: bytes) -> ApiKeyIdentity | None: ...


async def identify(headers: CIMultiDictProxy[str], verifier: JwtVerifier, lookups: CallerLookups) -> Principal:
    credential = credential_from_headers(headers)
    if credential.kind == "api_key":
        key = await lookups.api_key(hash_api_key(credential.value))
        if key is None:
            raise Unauthenticated("Unknown or revoked API key")
        return Principal(None, api_key_id=key.id, api_key_space_id=key.space_id, api_key_role=key.role)
    claims = await verifier.verify_async(credential.value)
    user_id = UUID(str(claims["sub"]))
    if not await lookups.user_exists(user_id):
        raise Unauthenticated("Unknown user")
    roles = claims.get("roles")
    return Principal(user_id, platform_admin=isinstance(roles, list) and PLATFORM_ADMIN in roles)
