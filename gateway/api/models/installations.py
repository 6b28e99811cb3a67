"""Installations of a service in a space, as the API reads and writes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from gateway.api.fields import ConfigObject, Credentials, NotNull, RequestModel, ResponseModel, Slug, SpaceRole

InstallationStatus = Literal["active", "inactive", "error"]



class Permissions(RequestModel):
    """Who in the space may call the plugin through the proxy (default: every member)."""

    min_role: SpaceRole = "viewer"


class InstallationCreate(RequestModel):
    """Name the service by exactly one of `service_id` and `slug` (checked by the handler)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["service_id"]}, {"required": ["slug"]}]})

    service_id: NotNull[UUID] = None
    slug: NotNull[Slug] = None
    config: ConfigObject = Field(default_factory=dict)
    credentials: Credentials = Field(default_factory=dict)
    permissions: Permissions = Field(default_factory=Permissions)
    status: InstallationStatus = "active"


class InstallationPatch(RequestModel):
    """Only the fields sent change; `config` and `credentials` are replaced whole."""

    config: NotNull[ConfigObject] = None
    credentials: NotNull[Credentials] = None
    permissions: NotNull[Permissions] = None
    status: NotNull[InstallationStatus] = None


class Installation(ResponseModel):
    """Every column but `credentials`, which is write-only: only its names are shown."""

    id: UUID
    service_id: UUID
    space_id: UUID
    service_slug: str | None = None
    service_name: str | None = None
    installed_by: UUID | None = None
    config: dict[str, Any] | None = None
    credential_keys: list[str]
    status: InstallationStatus | None = None
    last_health_check: datetime | None = None
    health_status: str | None = None
    breaker_open: bool = Field(False, description=(
        "Whether the gateway process that answered has a circuit breaker of this installation "
        "open: its calls then answer 503 at once (breakers are per process)"))
    permissions: dict[str, Any] | None = None
    installed_at: datetime | None = None
    updated_at: datetime | None = None
