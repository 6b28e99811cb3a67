"""Per-request state of the proxy pipeline, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from aiohttp import web

from auth.principal import Principal
from routing.loader import Installation, ProxyState
from routing.table import Match


@dataclass(slots=True)
class ProxyContext:
    """Filled in stage by stage; a stage that stops the request returns a response instead."""

    request: web.Request
    state: ProxyState  # the table in force when the request arrived, for its whole life
    space_id: UUID
    slug: str
    path: str  # raw, still percent-encoded, starting with "/"
    principal: Principal | None = None
    role: str | None = None
    installation: Installation | None = None
    match: Match | None = None
    upstream_status: int | None = None
    upstream_seconds: float | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
