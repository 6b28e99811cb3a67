"""Per-request state of the proxy pipeline, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from auth.principal import Principal
from gateway.proxy.breaker import Ticket
from routing.loader import Assignment, Installation, ProxyState
from routing.table import Match


@dataclass(slots=True)
class Capture:
    """The body of a MISS, collected by forward while it streams, up to the cacheable size, for
    the cache stage (gateway.proxy.caching) to store."""

    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False
    complete: bool = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow, self.chunks = True, []  # too big to keep: stop holding it at once
        else:
            self.chunks.append(chunk)


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
    instance_service_id: UUID | None = None  # the management proxy's target
    management: Assignment | None = None  # set by the management proxy's authorize stage
    upstream_status: int | None = None
    # A stale cached answer could stand in (stale_if_error): forward then turns an upstream's
    # 502/503/504 answer into an error, before streaming it, so the cache stage serves that one.
    stale_fallback: bool = False
    upstream_failure: str | None = None  # the kind of a failed upstream call (gateway.proxy.breaker)
    breaker: Ticket | None = None  # the call's admission by its breaker (none where turned off)
    upstream_seconds: float | None = None
    upstream_headers: CIMultiDictProxy[str] = field(default_factory=lambda: CIMultiDictProxy(CIMultiDict()))
    response_headers: dict[str, str] = field(default_factory=dict)  # added to whatever answers
    capture: Capture | None = None  # set by the cache stage on a MISS
