"""Services (the marketplace registry) as the API reads and writes them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from gateway.api.fields import (
    AuthType, Category, ConfigObject, HttpUrl, JsonObject, Name, NotNull, RequestModel, ResponseModel, Slug,
    UiType,
)
from gateway.api.models.common import AuthConfig

ServiceStatus = Literal["pending", "approved", "rejected", "deprecated"]
EventName = Annotated[str, Field(min_length=1, max_length=255)]
Description = Annotated[str, StringConstraints(min_length=0, max_length=100_000)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=50)]
Reason = Annotated[str, StringConstraints(min_length=0, max_length=2000)]


class HealthCheck(RequestModel):
    """`capabilities.health_check` (contract revision 3, "Plugin health"): what the gateway
    probes, `GET api_base_url + path`, and how it judges the answers."""

    path: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^/[^\s#]*$")]
    interval_seconds: Annotated[int, Field(ge=5, le=3600)] = 30
    timeout_seconds: Annotated[float, Field(gt=0)] = 5
    healthy_threshold: Annotated[int, Field(ge=1, le=10)] = 2
    unhealthy_threshold: Annotated[int, Field(ge=1, le=10)] = 3

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheck:
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError("timeout_seconds must be below interval_seconds")
        return self


# capabilities.webhook_url (contract revision 3, "Webhooks"): where the gateway POSTs the
# service's events; null or absent: none. Checked like target_url, its address too (services.py).
_WEBHOOK_URL: TypeAdapter[str | None] = TypeAdapter(HttpUrl | None)


def _checked_capabilities(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Capabilities are the vendor's own object; only `health_check` and `webhook_url` have a
    shape the gateway relies on, checked here (422 naming capabilities.health_check.<field>)."""
    if isinstance(value, dict) and "webhook_url" in value:
        try:
            _WEBHOOK_URL.validate_python(value["webhook_url"], strict=True)
        except ValidationError as exc:
            raise ValueError(f"webhook_url: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if isinstance(value, dict) and "health_check" in value:
        try:
            HealthCheck.model_validate(value["health_check"])
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in ("health_check", *first["loc"]))
            raise ValueError(f"{where}: {first['msg']}") from None
    return value


class _ServiceWritable(RequestModel):
    """Columns a maintainer may set. Every one is optional here; creation requires a few."""

    description: Description | None = None
    provider_url: HttpUrl | None = None
    category: Category | None = None
    capabilities: JsonObject = Field(default_factory=dict)
    api_base_url: HttpUrl | None = None
    api_auth_type: AuthType | None = None
    api_auth_config: AuthConfig = Field(default_factory=dict)
    ui_type: UiType | None = None
    ui_config: ConfigObject = Field(default_factory=dict)
    webhook_supported: bool = False
    webhook_events: list[EventName] | None = None
    icon_url: HttpUrl | None = None
    screenshots: list[HttpUrl] | None = None
    documentation_url: HttpUrl | None = None
    support_url: HttpUrl | None = None
    pricing_info: JsonObject | None = None

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_capabilities(value)


class ServiceCreate(_ServiceWritable):
    name: Name
    slug: Slug
    version: Version
    provider: Name


class ServicePatch(_ServiceWritable):
    """Only the fields sent change. `verified` and `security_audit` are for platform admins."""

    name: NotNull[Name] = None
    version: NotNull[Version] = None
    provider: NotNull[Name] = None
    # Declared only to name it in the refusal; the document leaves it out (no value is accepted).
    slug: SkipJsonSchema[Any] = None
    verified: NotNull[bool] = None
    security_audit: JsonObject | None = None

    @field_validator("slug", mode="before")
    @classmethod
    def _slug_is_fixed(cls, value: Any) -> Any:
        raise ValueError("cannot be changed: a slug stays with its service")


class InstallationHealth(ResponseModel):
    healthy: int
    unhealthy: int
    unknown: int = Field(description="no verdict yet: not probed, or no health_check declared")


class ServiceHealth(ResponseModel):
    """How a service's live, active installations fare, as counts: never a space's or an
    installation's id."""

    service_id: UUID
    health_check: dict[str, Any] | None = Field(description="capabilities.health_check, if declared")
    installations: InstallationHealth
    open_breakers: int = Field(description=(
        "circuit breakers of the service's installations open in the gateway process that "
        "answered (breakers are per process)"))


class StatusChange(RequestModel):
    status: Literal["approved", "rejected", "deprecated"]
    reason: Reason | None = None


class Service(ResponseModel):
    id: UUID
    name: str
    slug: str
    description: str | None = None
    version: str
    provider: str
    provider_url: str | None = None
    category: str | None = None
    status: ServiceStatus | None = None
    status_reason: str | None = None
    capabilities: dict[str, Any] | None = None
    api_base_url: str | None = None
    api_auth_type: str | None = None
    api_auth_config: dict[str, Any] | None = None
    ui_type: str | None = None
    ui_config: dict[str, Any] | None = None
    webhook_supported: bool | None = None
    webhook_events: list[str] | None = None
    icon_url: str | None = None
    screenshots: list[str] | None = None
    documentation_url: str | None = None
    support_url: str | None = None
    pricing_info: dict[str, Any] | None = None
    installation_count: int | None = None
    rating: Decimal | None = None
    review_count: int | None = None
    verified: bool | None = None
    security_audit: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ServiceListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: Annotated[int, Field(ge=1)] = 50
    cursor: Annotated[str, Field(max_length=512)] | None = None
    category: Annotated[str, Field(max_length=100)] | None = None
    status: ServiceStatus | None = None
    verified: bool | None = None
    q: Annotated[str, Field(max_length=200)] | None = None
