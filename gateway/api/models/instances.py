"""Infrastructure instances as the API reads and writes them."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import AfterValidator, Field, RootModel, StringConstraints

from gateway.api.fields import (
    JsonObject, Name, NotNull, Port, RequestModel, ResponseModel, Tags, no_secret_keys,
)

InstanceType = Literal["vm", "docker_host", "kubernetes", "cloud_instance"]
ConnectionType = Literal["ssh", "docker_api", "kubernetes", "http"]
InstanceStatus = Literal["online", "offline", "error", "unknown"]

_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")


def _host(value: str) -> str:
    """A bare hostname or IP address: whatever connects to it adds the scheme and port."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError("must be a hostname or an IP address (no scheme, port, path or whitespace)")
    return value


def _connection_config(value: dict[str, Any]) -> dict[str, Any]:
    # `secrets` is the one place a secret may go: it is encrypted before it is stored.
    secrets = value.get("secrets")
    if "secrets" in value and not (
        isinstance(secrets, dict) and all(isinstance(v, str) and len(v) <= 8192 for v in secrets.values())
    ):
        raise ValueError("'secrets' must be an object of strings (at most 8192 characters each)")
    no_secret_keys({key: item for key, item in value.items() if key != "secrets"})
    return value


Host = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_host)]
Protocol = Annotated[str, StringConstraints(min_length=1, max_length=10, pattern=r"^[a-z0-9]+$")]
OsText = Annotated[str, StringConstraints(min_length=0, max_length=50)]
ConnectionConfig = Annotated[dict[str, Any], AfterValidator(_connection_config)]


class _InstanceWritable(RequestModel):
    port: Port | None = None
    protocol: Protocol | None = None
    connection_type: ConnectionType | None = None
    connection_config: ConnectionConfig | None = None
    status: InstanceStatus | None = None
    os_type: OsText | None = None
    os_version: OsText | None = None
    resources: JsonObject | None = None
    tags: Tags | None = None


class InstanceCreate(_InstanceWritable):
    name: Name
    type: InstanceType
    host: Host


class InstancePatch(_InstanceWritable):
    """Only the fields sent change; a `connection_config` sent replaces the stored one whole."""

    name: NotNull[Name] = None
    type: NotNull[InstanceType] = None
    host: NotNull[Host] = None


class Instance(ResponseModel):
    """What every member of the space sees: no connection details."""

    id: UUID
    space_id: UUID | None = None
    name: str
    type: str
    host: str
    port: int | None = None
    protocol: str | None = None
    connection_type: str | None = None
    status: str | None = None
    last_health_check: datetime | None = None
    health_status: dict[str, Any] | None = None
    os_type: str | None = None
    os_version: str | None = None
    resources: dict[str, Any] | None = None
    tags: list[str] | None = None
    created_by: UUID | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class InstanceWithConnection(Instance):
    """What owners, admins and platform admins see. Required fields on purpose: a row without
    them (a member's view) cannot validate as this model and falls through to `Instance`."""

    connection_config: dict[str, Any] | None
    secret_keys: list[str]


class InstanceView(RootModel[Annotated[Union[InstanceWithConnection, Instance],
                                       Field(union_mode="left_to_right")]]):
    """An instance as the caller may see it (the handler decides by leaving keys out)."""

