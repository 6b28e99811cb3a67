"""Build the proxy's state from PostgreSQL, swap it whole, and keep it current.

Changes arrive through LISTEN/NOTIFY (migration 20250101000800) and trigger a debounced
reload; a periodic check of a cheap fingerprint is the safety net for missed notifications.
While PostgreSQL is unreachable, the last state keeps serving and `age` grows. An installation's
route that no longer keeps to the vendor's own hosts (`installation_route_problems`) is left out
of the table with a warning naming it, so it answers 404 rather than reach another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from yarl import URL

from db import proxy_state
from db.pool import CONNECTION_ERRORS, Database
from routing.table import Route, RouteTable, TemplateError, join_target

log = logging.getLogger("gateway.routing")

CHANNEL = "gateway_changes"
Rows = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]  # routes, installations, assignments
STATE_TABLES = frozenset({"service_registry", "service_installations", "service_api_routes",
                          # the management proxy's (migration 20250101001300)
                          "service_management_assignments", "instance_services", "infrastructure_instances"})
DEBOUNCE_SECONDS = 0.05
SAFETY_INTERVAL_SECONDS = 30.0
# Across spaces: through the SECURITY DEFINER function of migration 20250101000900.
FINGERPRINT = "SELECT public.gateway_routes_fingerprint()"


@dataclass(frozen=True, slots=True)
class Installation:
    """A live installation as the proxy needs it (credentials still sealed)."""

    id: UUID
    space_id: UUID
    service_id: UUID
    service_slug: str
    status: str
    min_role: str
    credentials: Mapping[str, Any] = field(hash=False)
    api_auth_type: str | None = None
    api_auth_config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    version: str = ""
    api_base_url: str | None = None
    # The service's capabilities.health_check as stored (validated on write), or None.
    health_check: Mapping[str, Any] | None = field(default=None, hash=False)
    health_status: str | None = None  # the last verdict written (healthy, unhealthy), or None
    # Whose sealed `credentials` these are: (table, row id), None for the installation's own. The
    # management proxy calls with an assignment's credentials instead (gateway/proxy/management.py).
    sealed_in: tuple[str, UUID] | None = None

    @property
    def credentials_owner(self) -> tuple[str, UUID]:
        return self.sealed_in or ("service_installations", self.id)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The active management assignment of an instance service (the most recent one, as
    `instance_services.management_plugin_id` follows), credentials still sealed."""

    id: UUID
    instance_service_id: UUID
    instance_id: UUID
    space_id: UUID
    plugin_id: UUID
    credentials: Mapping[str, Any] = field(hash=False)
    version: str = ""


@dataclass(frozen=True, slots=True)
class ProxyState:
    table: RouteTable
    installations: Mapping[tuple[UUID, str], Installation]
    loaded_at: float  # wall clock, for /readyz and metrics
    # (space id, instance service id) → its assignment; (space id, service id) → installation.
    assignments: Mapping[tuple[UUID, UUID], Assignment] = field(default_factory=dict)
    by_service: Mapping[tuple[UUID, UUID], Installation] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> ProxyState:
        return cls(RouteTable.empty(), {}, 0.0)

    def installation(self, space_id: UUID, slug: str) -> Installation | None:
        return self.installations.get((space_id, slug))

    def assignment(self, space_id: UUID, instance_service_id: UUID) -> Assignment | None:
        return self.assignments.get((space_id, instance_service_id))

    def installation_of(self, space_id: UUID, service_id: UUID) -> Installation | None:
        return self.by_service.get((space_id, service_id))


Origin = tuple[str, str, int]  # scheme, host (lower case, IDNA), port (the default one if none)


def origin_of(url: str | None) -> Origin | None:
    """The origin of an absolute http(s) URL; None for anything else (a path, garbage)."""
    if not url:
        return None
    try:
        parsed = URL(url)
        host, port = parsed.raw_host, parsed.port
    except (TypeError, ValueError):
        return None
    if parsed.scheme not in ("http", "https") or not host or port is None:
        return None
    return parsed.scheme, host.lower(), port


def vendor_origins(api_base_url: str | None, service_targets: Iterable[str]) -> frozenset[Origin]:
    """The hosts the vendor declared: its api_base_url's and its service-wide routes' absolute
    targets' (a relative one rides on api_base_url). Its token_url is not one: it takes tokens,
    not calls."""
    found = (origin_of(url) for url in (api_base_url, *service_targets))
    return frozenset(o for o in found if o is not None)


def installation_route_problems(row: Mapping[str, Any],
                                origins: frozenset[Origin]) -> list[dict[str, str]]:
    """An installation's route is written by a space admin, not the vendor, and is sent the space's
    credentials and its members' assertions: it may call only the vendor's own hosts, and get
    OAuth2 tokens only from the vendor's token_url. Judged on write and again at every load."""
    problems = []
    target = str(row.get("target_url") or "")
    relative = target.startswith("/") and not target.startswith("//")  # "//host/..." picks the host
    if not relative and origin_of(target) not in origins:
        problems.append({"field": "target_url", "message": "must be relative, or on the scheme, host "
                         "and port of the service's api_base_url or one of its service-wide routes"})
    if "token_url" in (row.get("auth_config") or {}):
        problems.append({"field": "auth_config.token_url", "message": "cannot be set on an installation's "
                         "route: the service's own token_url is used"})
    return problems


def _origins_by_service(rows: list[dict[str, Any]]) -> dict[UUID, frozenset[Origin]]:
    bases: dict[UUID, str | None] = {}
    targets: dict[UUID, list[str]] = {}
    for row in rows:
        bases[row["service_id"]] = row["api_base_url"]
        if row["installation_id"] is None:
            targets.setdefault(row["service_id"], []).append(row["target_url"])
    return {sid: vendor_origins(base, targets.get(sid, ())) for sid, base in bases.items()}


def _route(row: dict[str, Any]) -> Route | None:
    try:
        target = join_target(row["api_base_url"], row["target_url"])
    except TemplateError as exc:
        log.warning("route %s left out: %s", row["id"], exc)
        return None
    return Route(
        id=row["id"], service_id=row["service_id"], service_slug=row["service_slug"],
        installation_id=row["installation_id"], route_path=row["route_path"], method=row["method"],
        target_url=target, auth_type=row["auth_type"], auth_config=row["auth_config"] or {},
        rate_limit=row["rate_limit"], rate_limit_window=row["rate_limit_window"],
        cache_enabled=row["cache_enabled"], cache_ttl=row["cache_ttl"], options=row["options"] or {},
        version=row["updated_at"].isoformat() if row["updated_at"] else "",
    )


def _installation(row: dict[str, Any]) -> Installation:
    return Installation(
        id=row["id"], space_id=row["space_id"], service_id=row["service_id"],
        service_slug=row["service_slug"], status=row["status"] or "active",
        min_role=(row["permissions"] or {}).get("min_role", "viewer"),
        credentials=row["credentials"] or {}, api_auth_type=row["api_auth_type"],
        api_auth_config=row["api_auth_config"] or {},
        version=row["updated_at"].isoformat() if row["updated_at"] else "",
        api_base_url=row.get("api_base_url"),
        health_check=row["health_check"] if isinstance(row.get("health_check"), dict) else None,
        health_status=row.get("health_status"),
    )


def _allowed(row: dict[str, Any], origins: dict[UUID, frozenset[Origin]]) -> bool:
    """Service-wide routes pass; an installation's route that breaks the rule (written before it,
    or the vendor has since moved hosts) is left out, so it answers 404."""
    if row["installation_id"] is None:
        return True
    problems = installation_route_problems(row, origins.get(row["service_id"], frozenset()))
    for problem in problems:
        log.warning("installation route %s left out: %s %s", row["id"], problem["field"], problem["message"])
    return not problems


def _assignments(rows: Iterable[dict[str, Any]]) -> dict[tuple[UUID, UUID], Assignment]:
    """The most recent active assignment per instance service (ties: the larger id)."""
    newest: dict[tuple[UUID, UUID], dict[str, Any]] = {}
    for row in rows:
        key = (row["space_id"], row["instance_service_id"])
        seen = newest.get(key)
        rank = (row["assigned_at"] or datetime.min.replace(tzinfo=timezone.utc), str(row["id"]))
        if seen is None or rank > (seen["assigned_at"] or datetime.min.replace(tzinfo=timezone.utc), str(seen["id"])):
            newest[key] = row
    return {key: Assignment(id=r["id"], instance_service_id=r["instance_service_id"], instance_id=r["instance_id"],
                            space_id=r["space_id"], plugin_id=r["plugin_id"], credentials=r["credentials"] or {},
                            version=r["version"] or "")
            for key, r in newest.items()}


def build_state(routes: list[dict[str, Any]], installations: list[dict[str, Any]],
                assignments: Iterable[dict[str, Any]] = ()) -> ProxyState:
    origins = _origins_by_service(routes)
    table = RouteTable.build(r for r in map(_route, (row for row in routes if _allowed(row, origins)))
                             if r is not None)
    for rejected in table.rejected:
        log.warning("route %s left out: %s", rejected.route.id, rejected.reason)
    by_space = {(i.space_id, i.service_slug): i for i in map(_installation, installations)}
    by_service = {(i.space_id, i.service_id): i for i in by_space.values()}
    return ProxyState(table, by_space, time.time(), _assignments(assignments), by_service)


class StateLoader:
    """Owns the current ProxyState; `state` is swapped in one assignment, never mutated."""

    def __init__(self, db: Database, *, on_change: Callable[[dict[str, Any]], None] | None = None,
                 on_reload: Callable[[ProxyState], None] | None = None,
                 on_rows: Callable[[Rows], Awaitable[None]] | None = None,
                 safety_interval: float = SAFETY_INTERVAL_SECONDS) -> None:
        self.db = db
        self.state = ProxyState.empty()
        self.source = "database"  # or "snapshot": a last-known-good state (gateway/snapshot.py)
        self.on_rows = on_rows  # given every load's rows (the snapshot writer)
        self.loaded = asyncio.Event()
        self.on_change = on_change or (lambda payload: None)
        self.on_reload = on_reload or (lambda state: None)
        self.safety_interval = safety_interval
        self.listening = False
        self._fingerprint: str | None = None
        self._reload_pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._schema_error: type[BaseException] | None = None  # the last reason a load failed, said once

    @property
    def age(self) -> float | None:
        return time.time() - self.state.loaded_at if self.loaded.is_set() else None

    async def reload(self) -> None:
        pool = self.db.require()
        async with pool.acquire() as conn:
            fingerprint = await conn.fetchval(FINGERPRINT)
            routes, installations, assignments = await proxy_state.load(conn)
        # Building 10,000 routes takes a few hundred ms: off the event loop, so requests go on.
        self.state = await asyncio.to_thread(build_state, routes, installations, assignments)
        self.source = "database"
        self._fingerprint = fingerprint
        self.loaded.set()
        self.on_reload(self.state)
        log.info("route table loaded: %d routes, %d installations",
                 self.state.table.size, len(self.state.installations))
        if self.on_rows is not None:
            await self.on_rows((routes, installations, assignments))

    async def restore(self, rows: Rows, written_at: float) -> None:
        """Serve a last-known-good state until PostgreSQL answers (the next reload replaces it)."""
        state = await asyncio.to_thread(build_state, *rows)
        self.state = dataclasses.replace(state, loaded_at=written_at)
        self.source = "snapshot"
        self.loaded.set()
        self.on_reload(self.state)
        log.warning("serving from the snapshot written %.0f s ago: %d routes, %d installations",
                    time.time() - written_at, self.state.table.size, len(self.state.installations))

    def schedule_reload(self) -> None:
        """Coalesce a burst of notifications into one reload shortly after the first.

        A notification that arrives while a reload is running marks the state dirty again, so
        the running task makes one more pass: no change is left waiting for the safety net.
        """
        self._dirty = True
        if self._reload_pending is None or self._reload_pending.done():
            self._reload_pending = asyncio.create_task(self._reload_while_dirty())

    async def _reload_while_dirty(self) -> None:
        while self._dirty:
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._dirty = False
            try:
                await self.reload()
            except CONNECTION_ERRORS as exc:
                log.warning("route reload failed, serving the last table: %s", type(exc).__name__)
                return

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if change.get("table") in STATE_TABLES:
            self.schedule_reload()
        self.on_change(change)

    async def run(self) -> None:
        """Listen for changes (reconnecting as needed) and check the fingerprint periodically."""
        await self.db.ready.wait()
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.db.connect_one(timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.listening = True
                # Anything may have changed while we were not listening.
                self.on_change({"table": "*", "op": "RESYNC"})
                await self.reload()
                while not lost.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=self.safety_interval)
                    if not lost.is_set() and await conn.fetchval(FINGERPRINT) != self._fingerprint:
                        await self.reload()
            except CONNECTION_ERRORS as exc:
                log.warning("change listener lost PostgreSQL (%s); serving the last state", type(exc).__name__)
            except asyncpg.PostgresError as exc:
                # The schema is not there (yet): on Kubernetes the pods may start before the
                # migration Job has run. Said once per kind of error, then asked again.
                if type(exc) is not self._schema_error:
                    log.warning("cannot load the registry (%s: %s); retrying", type(exc).__name__, exc)
                    self._schema_error = type(exc)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)
