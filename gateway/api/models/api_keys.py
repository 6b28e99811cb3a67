"""API keys of a space, as the API reads and writes them."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from gateway.api.fields import Name, RequestModel, ResponseModel, SpaceRole


class ApiKeyCreate(RequestModel):
    name: Name
    role: SpaceRole = "member"


class ApiKey(ResponseModel):
    """A key as listings show it: never the secret, never its hash."""

    id: UUID
    space_id: UUID
    name: str
    role: SpaceRole
    prefix: str
    created_by: UUID | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    """The answer to creation: the one and only time `key` is shown."""

    key: str
