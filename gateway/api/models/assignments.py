"""Management plugin assignments of an instance service."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from gateway.api.fields import ConfigObject, Credentials, RequestModel, ResponseModel


class AssignmentCreate(RequestModel):
    """`credentials` are encrypted and never shown again (responses list `credential_keys`)."""

    plugin_id: UUID
    config: ConfigObject = Field(default_factory=dict)
    credentials: Credentials = Field(default_factory=dict)
    is_active: bool = True


class Assignment(ResponseModel):
    id: UUID
    instance_service_id: UUID | None = None
    plugin_id: UUID | None = None
    assigned_by: UUID | None = None
    assigned_at: datetime | None = None
    config: dict[str, Any] | None = None
    credential_keys: list[str] = Field(default_factory=list)
    is_active: bool | None = None
    last_used: datetime | None = None
