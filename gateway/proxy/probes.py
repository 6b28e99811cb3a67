"""Active health checks of plugin upstreams (contract revision 3, "Plugin health").

For every active installation whose service declares `capabilities.health_check`, one process
in the whole deployment at a time (the holder of an expiring lease in Redis; without Redis, the
one process there is) sends `GET api_base_url + path` every `interval_seconds` (jittered by
±10 %), with the installation's upstream authentication and the same upstream safety as a
proxied call (the shared session: its resolver refuses non-public addresses; redirects are not
followed). At most PROBES_PER_SECOND_PER_HOST probes start per upstream host, so with many
installations on one host the effective interval stretches.

`healthy_threshold` successes in a row make an installation healthy, `unhealthy_threshold`
failures unhealthy. A verdict is written (in batches, bookkeeping: no updated_at, no audit row)
when it changes, and otherwise refreshed at most every REFRESH_INTERVALS intervals, so an
upstream that flaps does not write its row on every probe. An installation that turns healthy
closes its breakers on every node (gateway_record_health notifies the change channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final
from uuid import UUID

import aiohttp
from yarl import URL

from db.pool import CONNECTION_ERRORS, Database
from db.errors import DatabaseUnavailable
from gateway import metrics
from gateway.proxy.breaker import Breakers
from gateway.proxy.resolver import literal_address_refused
from gateway.proxy.upstream_auth import UpstreamAuth, UpstreamAuthError
from gateway.redis_link import RedisLink, RedisUnavailable
from routing.loader import Installation, StateLoader
from routing.table import Route

log = logging.getLogger("gateway.probes")

LEASE_KEY: Final = "pgw:health:lease"
LEASE_SECONDS: Final = 5.0  # a dead prober's lease passes to another node within this
TICK_SECONDS: Final = 1.0
PROBES_PER_SECOND_PER_HOST: Final = 10
MAX_PROBES_IN_FLIGHT: Final = 100
REFRESH_INTERVALS: Final = 5
DEFAULTS: Final = {"interval_seconds": 30, "timeout_seconds": 5, "healthy_threshold": 2, "unhealthy_threshold": 3}

# Renew the lease only while we still hold it (a lease that expired and was taken stays taken).
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RECORD: Final = "SELECT public.gateway_record_health($1::uuid[], $2::text[], $3)"


@dataclass(slots=True)
class _Track:
    due: float
    verdict: str | None  # what the database holds (as last loaded or written)
    streak_ok: bool = True
    streak: int = 0
    written: float = 0.0
    busy: bool = False


@dataclass(slots=True)
class _Host:
    next_start: float = 0.0


@dataclass
class HealthProber:
    loader: StateLoader
    db: Database
    redis: RedisLink
    session: aiohttp.ClientSession
    upstream_auth: UpstreamAuth
    breakers: Breakers
    allow_private: bool = False
    clock: Callable[[], float] = time.monotonic
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    holding: bool = False
    _tracks: dict[UUID, _Track] = field(default_factory=dict)
    _hosts: dict[str, _Host] = field(default_factory=dict)
    _pending: dict[UUID, str] = field(default_factory=dict)
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self) -> None:
        await self.loader.loaded.wait()
        while True:
            try:
                if await self._hold_lease():
                    self._schedule()
                    await self._write_verdicts()
            except Exception:  # noqa: BLE001 - the prober must outlive any one bad round
                log.exception("health probe round failed")
            await asyncio.sleep(TICK_SECONDS)

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        if self.holding and self.redis.configured:
            with contextlib.suppress(RedisUnavailable):
                await self.redis.call(lambda r: r.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                    1, LEASE_KEY, self.node_id))

    async def _hold_lease(self) -> bool:
        if not self.redis.configured:  # one node: this process is the prober
            self.holding = True
            return True
        ms = int(LEASE_SECONDS * 1000)
        try:
            if self.holding:
                self.holding = bool(await self.redis.call(lambda r: r.eval(_RENEW, 1, LEASE_KEY, self.node_id, ms)))
            if not self.holding:
                self.holding = bool(await self.redis.call(lambda r: r.set(LEASE_KEY, self.node_id, nx=True, px=ms)))
        except RedisUnavailable:
            self.holding = False  # cannot tell who probes: better nobody than everybody
        return self.holding

    def _schedule(self) -> None:
        now = self.clock()
        live: set[UUID] = set()
        for installation in self.loader.state.installations.values():
            config = _config(installation)
            if config is None:
                continue
            live.add(installation.id)
            track = self._tracks.get(installation.id)
            if track is None:  # first seen: spread the first probes over one interval
                track = self._tracks[installation.id] = _Track(
                    now + random.uniform(0, config["interval_seconds"]), installation.health_status)
            if track.busy or now < track.due or len(self._in_flight) >= MAX_PROBES_IN_FLIGHT:
                continue
            url = str(installation.api_base_url).rstrip("/") + config["path"]
            host = self._hosts.setdefault(URL(url).raw_host or "", _Host())
            start = max(now, host.next_start)
            if start - now > TICK_SECONDS:  # this host's probes are booked beyond the next tick
                continue
            host.next_start = start + 1 / PROBES_PER_SECOND_PER_HOST
            track.busy = True
            track.due = now + config["interval_seconds"] * random.uniform(0.9, 1.1)
            task = asyncio.create_task(self._probe(installation, config, url, start - now, track))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        for gone in self._tracks.keys() - live:
            del self._tracks[gone]

    async def _probe(self, installation: Installation, config: dict[str, Any], url: str, delay: float,
                     track: _Track) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            ok = await self._check(installation, config, url)
            metrics.HEALTH_CHECKS.labels(installation.service_slug, "healthy" if ok else "unhealthy").inc()
            self._judge(installation, config, track, ok)
        finally:
            track.busy = False

    async def _check(self, installation: Installation, config: dict[str, Any], url: str) -> bool:
        target = URL(url)
        if not self.allow_private and literal_address_refused(target.raw_host or ""):
            return False
        probe_route = Route(id=UUID(int=0), service_id=installation.service_id,
                            service_slug=installation.service_slug, route_path="/", method="GET", target_url=url)
        try:
            headers = await self.upstream_auth.headers(probe_route, installation)
            timeout = aiohttp.ClientTimeout(total=float(config["timeout_seconds"]))
            async with self.session.get(target, headers=headers, allow_redirects=False, timeout=timeout) as response:
                return 200 <= response.status < 300
        except (UpstreamAuthError, aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    def _judge(self, installation: Installation, config: dict[str, Any], track: _Track, ok: bool) -> None:
        track.streak = track.streak + 1 if track.streak_ok == ok else 1
        track.streak_ok = ok
        verdict = track.verdict
        if ok and track.streak >= config["healthy_threshold"]:
            verdict = "healthy"
        elif not ok and track.streak >= config["unhealthy_threshold"]:
            verdict = "unhealthy"
        now = self.clock()
        changed = verdict != track.verdict
        stale = verdict is not None and now - track.written >= REFRESH_INTERVALS * config["interval_seconds"]
        if changed and verdict == "healthy":
            self.breakers.close_installation(installation.id)  # at once here; other nodes by notification
        if verdict is not None and (changed or stale):
            self._pending[installation.id] = verdict
            track.verdict, track.written = verdict, now

    async def _write_verdicts(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            pool = self.db.require()
            await pool.execute(RECORD, list(batch), list(batch.values()), datetime.now(timezone.utc))
        except (DatabaseUnavailable, *CONNECTION_ERRORS):
            self._pending = {**batch, **self._pending}  # next tick


def _config(installation: Installation) -> dict[str, Any] | None:
    """The installation's probe settings, or None when it is not probed."""
    check = installation.health_check
    if not check or not isinstance(check.get("path"), str) or not installation.api_base_url:
        return None
    if installation.status != "active":
        return None
    return {**DEFAULTS, **{k: v for k, v in check.items() if k in DEFAULTS or k == "path"}}
