"""/spaces/{space_id}/audit-log and /audit-log: what changed, who changed it, in which request.

Read in the caller's transaction: row-level security keeps a space's rows inside it and shows the
marketplace's (and every space's) to platform admins only, under the checks made here.
"""

from __future__ import annotations

from typing import Any

from db import audit as repo
from db.pagination import id_page_request
from gateway.api.caller import require_platform_admin, require_space_role, transaction
from gateway.api.models.audit_log import AuditEntryPage, AuditLogQuery, PlatformAuditLogQuery
from gateway.api.registry import Call, endpoint

TAG = "audit-log"


def _filters(query: AuditLogQuery) -> repo.Filters:
    return repo.Filters(table=query.table, row_id=query.row_id, actor_user_id=query.actor_user_id,
                        action=query.action, since=query.since, until=query.until)


@endpoint("GET", "/spaces/{space_id}/audit-log", summary="The space's audit log, newest first (owners, admins)",
          tag=TAG, query=AuditLogQuery, response=AuditEntryPage, errors=(403,))
async def list_space_audit_log(call: Call[None, AuditLogQuery]) -> dict[str, Any]:
    principal, _ = await require_space_role(call.request, call["space_id"], "admin")
    page = id_page_request(call.query.limit, call.query.cursor)
    async with transaction(call.request, principal, call["space_id"]) as conn:
        return await repo.list_entries(conn, call["space_id"], _filters(call.query), page)


@endpoint("GET", "/audit-log", summary="The marketplace's audit log, or one space's (platform admins)",
          tag=TAG, query=PlatformAuditLogQuery, response=AuditEntryPage, errors=(403,))
async def list_audit_log(call: Call[None, PlatformAuditLogQuery]) -> dict[str, Any]:
    principal = await require_platform_admin(call.request)
    page = id_page_request(call.query.limit, call.query.cursor)
    async with transaction(call.request, principal) as conn:
        return await repo.list_entries(conn, call.query.space_id, _filters(call.query), page)
