"""Read the caller's credential from the request headers (no verification here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multidict import CIMultiDictProxy

from auth.errors import Unauthenticated

API_KEY_PREFIX = "pgw_"


@dataclass(frozen=True, slots=True)
class Credential:
    kind: Literal["jwt", "api_key"]
    value: str


def credential_from_headers(headers: CIMultiDictProxy[str]) -> Credential:
    api_key = headers.get("X-API-Key")
    if api_key:
        return Credential("api_key", api_key.strip())
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Send Authorization: Bearer <token> or X-API-Key")
    return Credential("api_key" if token.startswith(API_KEY_PREFIX) else "jwt", token)
