"""Lifecycle webhooks (contract revision 3, "Webhooks"): the delivery workers and the signature.

Events are written to the outbox `public.webhook_deliveries` by triggers, in the transaction of
the change that causes them (migrations/20250101001200_webhooks.sql). Every gateway process runs
one WebhookCourier, which delivers them after commit, at least once:

- it takes due deliveries through `gateway_webhook_claim` (a SECURITY DEFINER function owned by
  the NOLOGIN role gateway_courier: the outbox crosses spaces), which locks them with FOR UPDATE
  SKIP LOCKED, so two nodes never take the same one, and leases each: `next_attempt_at` moves
  `lease_seconds` ahead, so a delivery whose node was killed mid-attempt is taken by the next
  claim after that;
- it is woken by NOTIFY on `gateway_webhooks` (sent at commit by the writing transaction) on a
  listener connection of its own, and claims every SWEEP_SECONDS anyway (the safety net for a
  lost notification, a retry that has come due, an expired lease);
- it POSTs the exact body bytes through the shared upstream session (its resolver refuses
  non-public addresses unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS), without following redirects,
  within GATEWAY_WEBHOOK_TIMEOUT (default 10 s) in all; a 2xx answer delivers it, anything else
  is retried after the next delay of GATEWAY_WEBHOOK_RETRY_SCHEDULE (plus up to 10 % jitter),
  and after the last one it is `failed`;
- at most PER_HOST deliveries are in flight per destination host and IN_FLIGHT in all, per
  process, and the claim takes only what can start at once: a slow or dead vendor endpoint holds
  its own host's slots and never delays deliveries to other hosts.

Each attempt is signed anew (`sign`): a compact JWS with the assertion key (ES256, its `kid`),
header `typ: gateway-webhook+jwt`, binding the body by its SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import aiohttp
import asyncpg
import jwt
from aiohttp import web
from yarl import URL

from db.errors import DatabaseUnavailable
from db.pool import CONNECTION_ERRORS, Database
from gateway.proxy.assertion import AssertionSigner
from gateway.proxy.resolver import UpstreamRefused, literal_address_refused
from gateway.settings import Settings

log = logging.getLogger("gateway.webhooks")

CHANNEL: Final = "gateway_webhooks"
SWEEP_SECONDS: Final = 5.0
PER_HOST: Final = 4
IN_FLIGHT: Final = 64
LEASE_MARGIN_SECONDS: Final = 20.0  # a lease outlives the attempt's deadline by this much
JITTER: Final = 0.1
SIGNATURE_TYPE: Final = "gateway-webhook+jwt"
SIGNATURE_LIFETIME_SECONDS: Final = 300
USER_AGENT: Final = "plugin-gateway-webhooks"

CLAIM: Final = "SELECT * FROM public.gateway_webhook_claim($1, $2, $3::text[], $4::integer[], $5)"
RECORD: Final = "SELECT public.gateway_webhook_record($1, $2, $3, $4, $5, $6)"


def sign(signer: AssertionSigner, *, audience: str, delivery_id: UUID | str, event: str, body: bytes,
         now: float | None = None) -> str:
    """X-Gateway-Signature for one attempt: claims iss, aud (the slug), iat, exp (iat + 300),
    delivery_id, event and body_sha256 (hex SHA-256 of the exact body bytes)."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": signer.issuer, "aud": audience, "iat": issued, "exp": issued + SIGNATURE_LIFETIME_SECONDS,
              "delivery_id": str(delivery_id), "event": event, "body_sha256": hashlib.sha256(body).hexdigest()}
    return jwt.encode(claims, signer.private_key, algorithm="ES256",
                      headers={"kid": signer.kid, "typ": SIGNATURE_TYPE})


def retry_delay(schedule: Sequence[float], attempts: int,
                rand: Callable[[], float] = random.random) -> float | None:
    """Seconds before the next attempt once `attempts` have failed; None when none is left."""
    if attempts > len(schedule):
        return None
    return schedule[max(attempts, 1) - 1] * (1 + JITTER * rand())


@dataclass(frozen=True, slots=True)
class Claimed:
    id: UUID
    service_id: UUID
    slug: str
    url: str | None
    host: str  # the per-host bound's key (the database computes it: gateway_webhook_host)
    event: str
    body: str
    attempts: int  # including the one now starting
    lease: UUID
    active: bool  # the service still takes webhooks

    @classmethod
    def of(cls, row: asyncpg.Record) -> Claimed:
        return cls(row["id"], row["service_id"], row["slug"], row["url"], row["host"] or "", row["event"],
                   row["body"], row["attempts"], row["lease"], bool(row["active"]))


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None


@dataclass
class WebhookCourier:
    db: Database
    session: aiohttp.ClientSession
    signer: AssertionSigner
    schedule: tuple[float, ...]
    timeout: float = 10.0
    allow_private: bool = False
    per_host: int = PER_HOST
    in_flight: int = IN_FLIGHT
    sweep_seconds: float = SWEEP_SECONDS
    lease_seconds: float = 0.0  # 0: the timeout plus LEASE_MARGIN_SECONDS, at least 30 s
    listening: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: Counter[str] = field(default_factory=Counter)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _more: bool = False  # the last claim was cut by a bound: claim again when a slot frees

    def __post_init__(self) -> None:
        if not self.lease_seconds:
            self.lease_seconds = max(30.0, self.timeout + LEASE_MARGIN_SECONDS)

    @classmethod
    def from_settings(cls, db: Database, session: aiohttp.ClientSession, signer: AssertionSigner,
                      settings: Settings) -> WebhookCourier:
        return cls(db, session, signer, tuple(settings.webhook_retry_schedule), settings.webhook_timeout,
                   settings.allow_private_upstreams)

    async def run(self) -> None:
        """Listen (reconnecting as needed), claim when woken and every sweep_seconds."""
        await self.db.ready.wait()
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.db.connect_one(timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.listening = True
                while not lost.is_set():
                    self._wake.clear()
                    try:
                        await self.dispatch()
                    except (DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                        log.warning("webhook claim failed: %s", type(exc).__name__)
                    await self._sleep(lost)
            except (DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                log.warning("webhook listener lost PostgreSQL (%s); retrying", type(exc).__name__)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Stop the attempts in flight: their leases expire and another node (or this one, when
        it comes back) takes them over."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self) -> None:
        self._wake.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._wake.set()

    async def _sleep(self, lost: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(lost.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.sweep_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def dispatch(self) -> int:
        """Claim what can start now and start it; the number started."""
        free = self.in_flight - len(self._tasks)
        if free <= 0:
            self._more = True
            return 0
        busy = {host: n for host, n in self._busy.items() if n > 0}
        rows = await self.db.require().fetch(CLAIM, free, self.per_host, list(busy), list(busy.values()),
                                             self.lease_seconds)
        for row in rows:
            claimed = Claimed.of(row)
            self._busy[claimed.host] += 1
            task = asyncio.create_task(self._attempt(claimed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._more = len(rows) >= free or any(n >= self.per_host for n in self._busy.values())
        return len(rows)

    async def _attempt(self, claimed: Claimed) -> None:
        try:
            outcome = await self.post(claimed)
            delay = None
            if outcome.delivered:
                result = "delivered"
            elif not claimed.active:
                result = "failed"
            else:
                delay = retry_delay(self.schedule, claimed.attempts)
                result = "failed" if delay is None else "retry"
            await self.db.require().fetchval(RECORD, claimed.id, claimed.lease, result, outcome.status_code,
                                             outcome.error, delay)
            if delay is not None and delay < self.sweep_seconds:
                asyncio.get_running_loop().call_later(delay + 0.05, self._wake.set)
        except (DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
            # Unrecorded: the lease expires and the delivery is attempted again.
            log.warning("webhook delivery %s: outcome not recorded (%s)", claimed.id, type(exc).__name__)
        except Exception:  # noqa: BLE001 - one delivery must never stop the courier
            log.exception("webhook delivery %s failed unexpectedly", claimed.id)
        finally:
            self._busy[claimed.host] -= 1
            if self._busy[claimed.host] <= 0:
                del self._busy[claimed.host]
            if self._more:
                self._wake.set()

    async def post(self, claimed: Claimed) -> Outcome:
        """One attempt. The error text names what went wrong in the gateway's words only: never
        the URL (it may carry the vendor's token), never the vendor's answer."""
        if not claimed.active or not claimed.url:
            return Outcome(False, error="the service no longer takes webhooks")
        try:
            url = URL(claimed.url)
        except ValueError:
            return Outcome(False, error="capabilities.webhook_url is not a URL")
        if url.scheme not in ("http", "https") or not url.raw_host:
            return Outcome(False, error="capabilities.webhook_url is not an absolute http(s) URL")
        if not self.allow_private and literal_address_refused(url.raw_host):
            return Outcome(False, error="the webhook URL is not a public address")
        body = claimed.body.encode()
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "X-Gateway-Event": claimed.event, "X-Gateway-Delivery": str(claimed.id),
            "X-Gateway-Signature": sign(self.signer, audience=claimed.slug, delivery_id=claimed.id,
                                        event=claimed.event, body=body),
        }
        try:
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                status = response.status
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            return Outcome(False, error=f"no answer within {self.timeout:g} s")
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc.__cause__, UpstreamRefused) or isinstance(exc, aiohttp.ClientConnectorDNSError):
                return Outcome(False, error="the webhook URL does not resolve to a public address")
            return Outcome(False, error=f"could not connect ({type(exc).__name__})")
        except (aiohttp.ClientError, UpstreamRefused, OSError) as exc:
            return Outcome(False, error=f"the request failed ({type(exc).__name__})")
        if 200 <= status < 300:
            return Outcome(True, status)
        if 300 <= status < 400:
            return Outcome(False, status, f"answered {status}; redirects are not followed")
        return Outcome(False, status, f"answered {status}")


COURIER: Final = web.AppKey("webhook_courier", WebhookCourier)
