"""/services/{id}/webhook-deliveries: what the gateway delivered to a service's webhook_url, and
redelivery. For the service's maintainers and platform admins (contract revision 3, "Webhooks")."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from auth.principal import Principal
from db import services as services_repo
from db import webhooks as repo
from db.pagination import page_request
from gateway.api.caller import authenticate, transaction
from gateway.api.models.common import page_of
from gateway.api.models.webhooks import DeliveryListQuery, WebhookDelivery
from gateway.api.registry import Call, endpoint
from gateway.errors import Forbidden, NotFound

TAG = "services"
PATH = "/services/{service_id}/webhook-deliveries"


async def _maintained(conn: asyncpg.Connection, principal: Principal, service_id: UUID) -> dict[str, Any]:
    """The service, once the caller is known to maintain it (or to be a platform admin)."""
    row = await services_repo.read_for_maintainer(conn, service_id, principal.user_id)
    if not (principal.platform_admin or row["is_maintainer"]):
        if row["status"] not in ("approved", "deprecated"):
            raise NotFound("No such service")  # others may not even learn that it exists
        raise Forbidden("Only the service's maintainers may see its webhook deliveries")
    return row


@endpoint("GET", PATH, summary="List the service's webhook deliveries (newest first)", tag=TAG,
          query=DeliveryListQuery, response=page_of(WebhookDelivery), errors=(403,))
async def list_deliveries(call: Call[None, DeliveryListQuery]) -> dict[str, Any]:
    principal = await authenticate(call.request)
    q = call.query
    async with transaction(call.request, principal) as conn:
        await _maintained(conn, principal, call["service_id"])
        return await repo.list_deliveries(conn, call["service_id"], q.status, page_request(q.limit, q.cursor))


@endpoint("POST", PATH + "/{delivery_id}/redeliver", summary="Queue a webhook delivery again", tag=TAG,
          response=WebhookDelivery, status=202, errors=(403,))
async def redeliver(call: Call[None, None]) -> dict[str, Any]:
    """Due at once, its attempts counted afresh under GATEWAY_WEBHOOK_RETRY_SCHEDULE; the same
    delivery id, so a receiver that processed it already drops it."""
    principal = await authenticate(call.request)
    async with transaction(call.request, principal) as conn:
        await _maintained(conn, principal, call["service_id"])
        row = await repo.redeliver(conn, call["service_id"], call["delivery_id"])
    if row is None:
        raise NotFound("No such webhook delivery of this service")
    return row
