"""The audit log as the API shows it (contract revision 3, "Audit log"). Rows hold no secret: the
database reduced them to their names when it wrote the row."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from gateway.api.fields import ResponseModel
from gateway.api.models.common import ListQuery, page_of

AuditTable = Literal["service_registry", "service_api_routes", "service_ui_components", "service_installations",
                     "api_keys", "service_maintainers", "infrastructure_instances", "instance_services",
                     "service_management_assignments"]
AuditAction = Literal["insert", "update", "delete"]


def _storable(at: datetime) -> datetime:
    """A moment both PostgreSQL's timestamptz and Python's datetime hold (year 1 at +01:00 is year 0)."""
    try:
        utc = at.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not 1 < utc.year < 9999:
        raise ValueError("is out of range")
    return utc


def _rfc3339(value: object) -> object:
    """Only an RFC 3339 date-time, as the document says: pydantic alone would also take a number
    (`until=0.5`) as seconds since the epoch."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an RFC 3339 date-time with a UTC offset") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an RFC 3339 date-time with a UTC offset")
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_storable)]


class AuditLogQuery(ListQuery):
    """Newest first. `since` is inclusive, `until` exclusive (on `occurred_at`)."""

    table: Annotated[AuditTable | None, Field(description="only rows of this table")] = None
    row_id: Annotated[UUID | None, Field(description="one row's history (service_maintainers: the service's id)")] = None
    actor_user_id: UUID | None = None
    action: AuditAction | None = None
    since: Annotated[Moment | None, Field(description="occurred at or after (with a UTC offset)")] = None
    until: Annotated[Moment | None, Field(description="occurred before (with a UTC offset)")] = None


class PlatformAuditLogQuery(AuditLogQuery):
    space_id: Annotated[UUID | None, Field(description="this space's rows instead of the marketplace's")] = None


class AuditEntry(ResponseModel):
    """One recorded change. `prev_hash` and `hash` (hex) link it into its chain (one per space, one
    for the marketplace); `gateway audit verify` recomputes them."""

    id: int
    occurred_at: datetime
    space_id: UUID | None = None
    actor_user_id: UUID | None = None
    actor_api_key_id: UUID | None = None
    request_id: str | None = None
    action: AuditAction
    table_name: str
    row_id: UUID | None = None
    changed_fields: list[str]
    old_values: dict[str, Any] | None = None
    new_values: dict[str, Any] | None = None
    prev_hash: str
    hash: str


AuditEntryPage = page_of(AuditEntry)
