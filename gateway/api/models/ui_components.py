"""UI components a service contributes to the platform's pages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from gateway.api.fields import ConfigObject, Name, NotNull, Permission, RequestModel, ResponseModel, UiType
from gateway.api.models.common import ListQuery

ComponentType = Literal["widget", "page", "sidebar", "modal"]
ComponentId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Placement = Literal["dashboard", "sidebar", "settings"]


def _distinct(values: list[str] | None) -> list[str] | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("must not repeat a permission")
    return values


Permissions = Annotated[list[Permission], Field(max_length=5, json_schema_extra={"uniqueItems": True}),
                      AfterValidator(_distinct)]


class _ComponentWritable(RequestModel):
    component_id: ComponentId | None = None
    render_config: ConfigObject = Field(default_factory=dict)
    placement_config: ConfigObject = Field(default_factory=dict)
    # Empty or null: everyone in the space; otherwise only callers holding one of these.
    required_permissions: Permissions | None = None


class ComponentCreate(_ComponentWritable):
    component_type: ComponentType
    component_name: Name
    render_type: UiType
    placement: Placement


class ComponentPatch(_ComponentWritable):
    """Only the fields sent change."""

    component_type: NotNull[ComponentType] = None
    component_name: NotNull[Name] = None
    render_type: NotNull[UiType] = None
    placement: NotNull[Placement] = None

    @field_validator("render_config", "placement_config", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value


class UiComponent(ResponseModel):
    id: UUID
    service_id: UUID
    installation_id: UUID | None = None
    component_type: str | None = None
    component_name: str | None = None
    component_id: str | None = None
    render_type: str | None = None
    render_config: dict[str, Any] | None = None
    placement: str | None = None
    placement_config: dict[str, Any] | None = None
    required_permissions: list[str] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SpaceComponentQuery(ListQuery):
    placement: Placement | None = None
