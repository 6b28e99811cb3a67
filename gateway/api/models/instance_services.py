"""Services running on an instance, as the API and discovery read and write them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import Field, RootModel

from gateway.api.fields import ConfigObject, HttpUrl, Name, NotNull, RequestModel, ResponseModel
from gateway.api.models.common import ListQuery

InstanceServiceType = Literal["docker_container", "systemd_service", "application"]
InstanceServiceStatus = Literal["running", "stopped", "error", "unknown"]


class _InstanceServiceWritable(RequestModel):
    """`management_plugin_id` is absent on purpose: it follows the service's assignments."""

    status: InstanceServiceStatus | None = None
    service_config: ConfigObject | None = None
    management_config: ConfigObject | None = None
    endpoints: list[Any] | None = None
    health_check_url: HttpUrl | None = None


class InstanceServiceCreate(_InstanceServiceWritable):
    """One service, posted alone or as an item of a discovery sync."""

    name: Name
    type: InstanceServiceType


class InstanceServicePatch(_InstanceServiceWritable):
    name: NotNull[Name] = None
    type: NotNull[InstanceServiceType] = None


class InstanceServiceQuery(ListQuery):
    managed: bool = False


class InstanceService(ResponseModel):
    id: UUID
    instance_id: UUID | None = None
    name: str
    type: str
    status: str | None = None
    service_config: dict[str, Any] | None = None
    endpoints: list[Any] | None = None
    health_check_url: str | None = None
    management_plugin_id: UUID | None = None
    management_config: dict[str, Any] | None = None
    discovered_at: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ManagedInstanceService(InstanceService):
    """A `?managed=true` item. Required fields on purpose: rows of the plain listing lack them
    and fall through to `InstanceService`, so those items do not carry empty plugin fields."""

    plugin_name: str
    plugin_slug: str


class InstanceServiceView(RootModel[Annotated[Union[ManagedInstanceService, InstanceService],
                                              Field(union_mode="left_to_right")]]):
    """An item of the services listing, with the plugin's name and slug when it was asked for."""
