"""Webhook deliveries of a service (contract revision 3, "Webhooks"), as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.fields import ResponseModel

DeliveryStatus = Literal["pending", "delivered", "failed"]
WebhookEvent = Literal[
    "installation.created", "installation.updated", "installation.deleted",
    "service.approved", "service.rejected", "service.deprecated",
    "assignment.created", "assignment.deleted",
]


class WebhookDelivery(ResponseModel):
    """One event for the service's webhook_url. `id` is the body's `id` and the
    `X-Gateway-Delivery` header: the same on every attempt, so receivers deduplicate by it."""

    id: UUID
    service_id: UUID
    space_id: UUID | None = None
    installation_id: UUID | None = None
    event: WebhookEvent
    occurred_at: datetime
    status: DeliveryStatus
    attempts: int = Field(description="attempts made since the delivery was last queued")
    last_status_code: int | None = Field(None, description="the HTTP status of the last answer; null without one")
    last_error: str | None = Field(None, description="why the last attempt did not deliver, in the gateway's words")
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = Field(None, description=(
        "pending: when the next attempt is due (while one is in flight, when another node may take "
        "it over); null once delivered or failed"))
    created_at: datetime
    delivered_at: datetime | None = None


class DeliveryListQuery(BaseModel):
    """`?status=`, and the usual `?limit=` and `?cursor=` (newest first)."""

    model_config = ConfigDict(extra="ignore")
    limit: Annotated[int, Field(ge=1)] = 50
    cursor: Annotated[str, Field(max_length=512)] | None = None
    status: DeliveryStatus | None = None
