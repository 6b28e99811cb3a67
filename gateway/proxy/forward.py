"""The terminal stage: call the plugin and stream its answer back.

Bodies are streamed both ways with back-pressure (each chunk is written before the next is
read), never held whole in memory. Each call holds a slot of the upstream host's fair pool
(gateway.proxy.pools) for its whole exchange, and the caller's body must keep coming
(GATEWAY_CLIENT_BODY_TIMEOUT, GATEWAY_CLIENT_BODY_MIN_RATE): a caller sending it slowly would
otherwise hold that slot, and the upstream connection, for as long as it likes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway import metrics
from gateway.client_address import Networks, is_trusted_proxy
from gateway.proxy.breaker import FAILING_STATUSES, Key, outcome_of
from gateway.errors import (BadGateway, GatewayError, GatewayTimeout, PayloadTooLarge, RequestTimeout,
                            ServiceUnavailable)
from gateway.middleware import REQUEST_ID_HEADER, problem_response, request_id_of, traceparent_of
from gateway.proxy.context import ProxyContext
from gateway.proxy.headers import TRACEPARENT, downstream_response_headers, upstream_request_headers
from gateway.proxy.pools import PoolTimeout, host_key
from gateway.proxy.resolver import UpstreamRefused, literal_address_refused
from gateway.proxy.runtime import ProxyRuntime, runtime_of
from gateway.proxy.upstream_auth import UpstreamAuthError

log = logging.getLogger("gateway.proxy")

BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
CHUNK = 64 * 1024


UNREACHABLE_ADDRESS = "The plugin's address is not reachable from the gateway"


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    """The caller's body stopped coming (reason "timeout") or trickles (reason "min_rate").
    Not an OSError: aiohttp's client would take one for a failure of the upstream socket."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _count(ctx: ProxyContext, kind: str) -> None:
    """Count an upstream failure by kind (a fixed set of names); the breaker judges it by kind."""
    ctx.upstream_failure = kind
    metrics.UPSTREAM_ERRORS.labels(ctx.installation.service_slug if ctx.installation else "-", kind).inc()


def _failed(ctx: ProxyContext, kind: str, error: GatewayError) -> GatewayError:
    _count(ctx, kind)
    return error


# The contract's "bytes per second over any 10 s"; not a setting.
RATE_WINDOW: Final = 10.0
# Arrivals are recorded per tenth of a second (counted at the tick's end, in the caller's favour),
# so a body trickled byte by byte keeps at most ~100 records.
_TICK: Final = 0.1


class BodyPace:
    """How long the next read of a caller's body may wait.

    Time here is *caller time*: only the time spent waiting for the caller's bytes. While the
    gateway waits for the upstream to take a chunk (back-pressure) the clock stands still, so a
    slow plugin never makes its callers look slow.

    - gap: no read waits longer than `gap` seconds;
    - rate: once RATE_WINDOW seconds have passed, every RATE_WINDOW-long stretch must have brought
      at least `min_rate × RATE_WINDOW` bytes (0 = off). With the arrivals recorded, the moment
      the latest window would fall short if nothing more came is known in advance: that moment
      is the read's deadline, so no timer polls.
    """

    __slots__ = ("_marks", "clock", "gap", "need", "total")

    def __init__(self, gap: float, min_rate: int) -> None:
        self.gap = gap
        self.need = min_rate * RATE_WINDOW
        self.clock = 0.0  # caller time so far
        self.total = 0  # bytes so far
        self._marks: deque[tuple[float, int]] = deque([(0.0, 0)])  # (caller time, bytes by then)

    def allowance(self) -> tuple[float, str]:
        """Seconds the next read may wait, and the reason it fails if it waits that long."""
        rate_left = self._rate_deadline() - self.clock
        if rate_left < self.gap:
            return max(rate_left, 0.0), "min_rate"
        return self.gap, "timeout"

    def arrived(self, size: int, waited: float) -> None:
        """`size` bytes came after waiting `waited` seconds; _BodyTooSlow if they came too late."""
        self.clock += waited
        self.total += size
        tick = math.ceil(self.clock / _TICK) * _TICK
        if self._marks[-1][0] >= tick:
            self._marks[-1] = (self._marks[-1][0], self.total)
        else:
            self._marks.append((tick, self.total))
        if self.clock > self._rate_deadline():
            raise _BodyTooSlow("min_rate")

    def _rate_deadline(self) -> float:
        if not self.need:
            return math.inf
        # The window (t - RATE_WINDOW, t] falls short once it no longer holds the first mark
        # after which fewer than `need` bytes came; marks before that one never matter again.
        marks, floor = self._marks, self.total - self.need
        while marks[0][1] <= floor:
            marks.popleft()
        return max(RATE_WINDOW, marks[0][0] + RATE_WINDOW)


class _Upload:
    """A caller's body on its way upstream. aiohttp's client sends it from a task of its own,
    which may still run once the answer streams back (a plugin may answer before it has read
    everything): a deadline passed then aborts the upstream call by closing its answer."""

    __slots__ = ("answer", "fault", "pace")

    def __init__(self, pace: BodyPace) -> None:
        self.pace = pace
        self.answer: aiohttp.ClientResponse | None = None
        self.fault: _BodyTooSlow | None = None

    def failed(self, fault: _BodyTooSlow) -> _BodyTooSlow:
        self.fault = fault
        if self.answer is not None:
            self.answer.close()  # its connection is closed, not reused
        return fault


async def _counted(request: web.Request, limit: int, upload: _Upload) -> AsyncIterator[bytes]:
    """The caller's body, passed on as it arrives, stopped the moment it passes the limit or
    comes too slowly (see BodyPace)."""
    content, pace = request.content, upload.pace
    loop = asyncio.get_running_loop()
    while True:
        chunk = content.read_nowait(CHUNK)  # what has arrived already needs no timer
        waited = 0.0
        if not chunk:
            if content.at_eof():
                return
            allowance, reason = pace.allowance()
            started = loop.time()
            try:
                async with asyncio.timeout(allowance):
                    chunk = await content.read(CHUNK)
            except TimeoutError:
                raise upload.failed(_BodyTooSlow(reason)) from None
            if not chunk:
                return
            waited = loop.time() - started
        try:
            pace.arrived(len(chunk), waited)
        except _BodyTooSlow as exc:
            raise upload.failed(exc) from None
        if limit and pace.total > limit:
            raise _BodyTooLarge
        yield chunk


def _caller_fault(exc: BaseException) -> _BodyTooLarge | _BodyTooSlow | None:
    """The caller's body at the root of a failure: aiohttp's client wraps what the body raised
    (once when sending, again when the answer is read), so the chain is walked a few links."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 8:
        candidate = pending.pop()
        if candidate is None or any(candidate is s for s in seen):
            continue
        if isinstance(candidate, (_BodyTooLarge, _BodyTooSlow)):
            return candidate
        seen.append(candidate)
        pending += (candidate.__cause__, candidate.__context__)
    return None


def _identity_headers(ctx: ProxyContext, rt: ProxyRuntime) -> dict[str, str]:
    principal, installation = ctx.principal, ctx.installation
    assert principal is not None and installation is not None and ctx.role is not None
    managed = ctx.management  # a management call (gateway/proxy/management.py)
    headers = {
        "X-Gateway-Space-Id": str(ctx.space_id),
        "X-Gateway-Installation-Id": str(installation.id),
        "X-Gateway-Assertion": rt.signer.assertion(
            subject=principal.subject, audience=ctx.slug, space_id=str(ctx.space_id),
            installation_id=str(installation.id), role=ctx.role,
            instance_service_id=str(managed.instance_service_id) if managed else None),
    }
    if principal.user_id is not None:
        headers["X-Gateway-User-Id"] = str(principal.user_id)
    if managed is not None:
        headers["X-Gateway-Instance-Service-Id"] = str(managed.instance_service_id)
        headers["X-Gateway-Instance-Id"] = str(managed.instance_id)
    return headers


def _forwarded_headers(request: web.Request, trusted_proxies: Networks) -> dict[str, str]:
    """X-Forwarded-* (contract revision 3). The caller's own were dropped by the request filter;
    only a peer in GATEWAY_TRUSTED_PROXIES is believed: its X-Forwarded-For gets the peer's
    address appended, and its X-Forwarded-Proto and -Host are passed on. Any other peer's are
    replaced by the gateway's own values (X-Forwarded-For: the peer alone)."""
    incoming, peer = request.headers, request.remote or ""
    headers = {
        REQUEST_ID_HEADER: request_id_of(request),
        # The caller's trace when it sent a valid one, else a new trace (the same one is logged).
        TRACEPARENT: traceparent_of(request),
    }
    proto, host = request.scheme, request.host
    chain = [peer] if peer else []
    if is_trusted_proxy(peer, trusted_proxies):
        prior = ", ".join(v.strip() for v in incoming.getall("X-Forwarded-For", ()) if v.strip())
        chain = [prior, peer] if prior else chain
        proto = ", ".join(incoming.getall("X-Forwarded-Proto", ())) or proto
        host = ", ".join(incoming.getall("X-Forwarded-Host", ())) or host
    if chain:
        headers["X-Forwarded-For"] = ", ".join(chain)
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = host
    return headers


async def _open_upstream(ctx: ProxyContext, rt: ProxyRuntime, target: URL, headers: CIMultiDict[str],
                         limit: int, upload: _Upload | None) -> aiohttp.ClientResponse:
    assert ctx.match is not None  # the stages routed it
    request, route = ctx.request, ctx.match.route
    options = route.options
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=float(options.get("connect_timeout", rt.settings.upstream_connect_timeout)),
        sock_read=_read_timeout(ctx, rt))
    retry_on_401 = upload is None and request.method in BODILESS_METHODS  # a body is sent once
    for attempt in (1, 2):
        assert ctx.installation is not None
        try:
            headers.update(await rt.upstream_auth.headers(route, ctx.installation))
        except UpstreamAuthError as exc:
            log.warning("upstream auth failed for installation %s: %s", ctx.installation.id, exc)
            raise _failed(ctx, "upstream_auth", BadGateway("The plugin's credentials could not be used")) from None
        try:
            upstream = await rt.session.request(
                request.method, target, headers=headers, allow_redirects=False, timeout=timeout,
                data=_counted(request, limit, upload) if upload is not None else None)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise _failed(ctx, "timeout", GatewayTimeout("The plugin did not answer in time")) from None
        except aiohttp.ClientConnectionError as exc:
            fault = _caller_fault(exc)
            if fault is not None:
                raise fault from None
            if isinstance(exc.__cause__, UpstreamRefused) or isinstance(exc, aiohttp.ClientConnectorDNSError):
                raise _failed(ctx, "address_refused", BadGateway(UNREACHABLE_ADDRESS)) from None
            raise _failed(ctx, "connect", BadGateway("The plugin could not be reached")) from None
        except (aiohttp.ClientError, UpstreamRefused):
            raise _failed(ctx, "bad_response", BadGateway("The plugin could not be reached")) from None
        # An OAuth2 token may be revoked before it expires: drop it, and retry what can be retried.
        if upstream.status == 401 and rt.upstream_auth.is_oauth2(route, ctx.installation):
            rt.upstream_auth.drop_token(route, ctx.installation)
            if retry_on_401 and attempt == 1:
                upstream.release()
                continue
        return upstream
    raise AssertionError("unreachable")


async def _answer_and_hang_up(ctx: ProxyContext, error: GatewayError) -> web.StreamResponse:
    """Answer with the problem, then close the caller's connection at once: the rest of its body
    is unread, and waiting for it (aiohttp's lingering close reads on for 10 s) is what a caller
    too slow to send it must not get."""
    request = ctx.request
    response = problem_response(error, request_id_of(request))
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # what was written is still flushed before the socket closes
    return response


async def forward(ctx: ProxyContext) -> web.StreamResponse:
    request, rt = ctx.request, runtime_of(ctx.request)
    assert ctx.match is not None
    # The query from the request line itself: yarl's parsed form re-normalizes escapes (%2F → /).
    raw_query = request.raw_path.partition("?")[2]
    target = URL(ctx.match.upstream_url(raw_query), encoded=True)
    if not rt.settings.allow_private_upstreams and literal_address_refused(target.raw_host or ""):
        raise _failed(ctx, "address_refused", BadGateway(UNREACHABLE_ADDRESS))
    limit = int(ctx.match.route.options.get("max_body_bytes", rt.settings.proxy_max_body_bytes))
    if limit and request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("The request body is larger than this route accepts")
    # An open breaker answers at once: before the pool, before anything reaches the upstream.
    key = _breaker_key(ctx, target)
    if key is None:
        return await _call(ctx, rt, target, limit)
    ticket = rt.breakers.try_admit(key) or await rt.breakers.wait_admit(key, _read_timeout(ctx, rt))
    ctx.breaker = ticket
    try:
        return await _call(ctx, rt, target, limit)
    finally:
        assert ctx.installation is not None
        rt.breakers.settle(ticket, ctx.installation.service_slug,
                           outcome_of(ctx.upstream_failure, ctx.upstream_status))


def _read_timeout(ctx: ProxyContext, rt: ProxyRuntime) -> float:
    assert ctx.match is not None
    return float(ctx.match.route.options.get("timeout", rt.settings.upstream_timeout))


def _breaker_key(ctx: ProxyContext, target: URL) -> Key | None:
    """(installation, upstream origin), or None where the route turned its breaker off."""
    assert ctx.match is not None and ctx.installation is not None
    if ctx.match.route.options.get("breaker") is False:
        return None
    return ctx.installation.id, f"{target.scheme}://{target.raw_host}:{target.port}"


async def _call(ctx: ProxyContext, rt: ProxyRuntime, target: URL, limit: int) -> web.StreamResponse:
    request = ctx.request
    headers = upstream_request_headers(request.headers)
    headers.update(_forwarded_headers(request, rt.settings.trusted_proxies))
    headers.update(_identity_headers(ctx, rt))

    try:
        lease = await rt.pools.acquire(host_key(target), ctx.space_id)
    except PoolTimeout:
        raise _failed(ctx, "pool_timeout", ServiceUnavailable(
            "The plugin is busy: no connection to it became free in time",
            retry_after=max(1, math.ceil(rt.pools.timeout)))) from None
    # From here on the slot is ours; the `finally` below gives it back whatever happens.
    started = time.perf_counter()
    upstream: aiohttp.ClientResponse | None = None
    upload = None
    if request.body_exists:
        upload = _Upload(BodyPace(rt.settings.client_body_timeout, rt.settings.client_body_min_rate))
    try:
        try:
            upstream = await _open_upstream(ctx, rt, target, headers, limit, upload)
        except _BodyTooLarge:
            raise PayloadTooLarge("The request body is larger than this route accepts") from None
        except _BodyTooSlow as exc:
            # aiohttp closes the upstream connection (a half-sent body): it is not reused.
            metrics.CLIENT_BODY_ABORTED.labels(exc.reason).inc()
            detail = ("The request body stopped arriving" if exc.reason == "timeout"
                      else "The request body arrives too slowly")
            return await _answer_and_hang_up(ctx, RequestTimeout(detail))
        ctx.upstream_status, ctx.upstream_headers = upstream.status, upstream.headers
        if ctx.breaker is not None and upstream.status not in FAILING_STATUSES:
            rt.breakers.answered(ctx.breaker)  # before the body: a stream vouches at once
        if ctx.stale_fallback and upstream.status in FAILING_STATUSES:
            raise BadGateway("The plugin answered with an error")  # the cache stage serves STALE
        if upload is not None:
            upload.answer = upstream
        return await _stream_back(ctx, upstream, upload)
    finally:
        ctx.upstream_seconds = time.perf_counter() - started
        if upstream is not None:
            upstream.release()  # first: the next holder of the slot may reuse the connection
        lease.release()


class _OneWriteResponse(web.StreamResponse):
    """For an answer of known, small length: the head is held back and sent with the first body
    bytes, one system call (aiohttp's web.Response does the same). A stream of unknown length
    keeps sending its head at once, so an event stream's caller sees it before the first event."""
    _send_headers_immediately = False


async def _stream_back(ctx: ProxyContext, upstream: aiohttp.ClientResponse,
                       upload: _Upload | None) -> web.StreamResponse:
    request, capture = ctx.request, ctx.capture
    small = upstream.content_length is not None and upstream.content_length <= CHUNK
    response = (_OneWriteResponse if small else web.StreamResponse)(
        status=upstream.status, reason=upstream.reason, headers=downstream_response_headers(upstream.headers))
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    response.headers.update(ctx.response_headers)
    if upstream.content_length is not None and request.method != "HEAD" and upstream.status not in (204, 304):
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
            if capture is not None:
                capture.add(chunk)
    except ConnectionResetError:
        # Writing to the caller, who went away (aiohttp's ClientConnectionResetError is one, and
        # only a write raises it): not the upstream's failure. The middleware logs a 499.
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # Headers are gone already: the only honest signal left is to cut the connection,
        # so the caller cannot take a truncated body for a complete one. (A body deadline that
        # passes while the answer streams ends here too: _Upload.failed closed the answer.)
        fault = upload.fault if upload is not None else None
        if fault is not None:
            metrics.CLIENT_BODY_ABORTED.labels(fault.reason).inc()
        else:
            log.warning("upstream broke mid-response: %s", type(exc).__name__)
            _count(ctx, "broken_stream")
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    if capture is not None:
        capture.complete = True
    return response
