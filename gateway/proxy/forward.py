"""The terminal stage: call the plugin and stream its answer back.

Bodies are streamed both ways with back-pressure (each chunk is written before the next is
read), never held whole in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway import metrics
from gateway.errors import BadGateway, GatewayError, GatewayTimeout, PayloadTooLarge
from gateway.middleware import REQUEST_ID_HEADER, request_id_of, traceparent_of
from gateway.proxy.context import ProxyContext
from gateway.proxy.headers import TRACEPARENT, downstream_response_headers, upstream_request_headers
from gateway.proxy.resolver import UpstreamRefused, literal_address_refused
from gateway.proxy.runtime import ProxyRuntime, runtime_of
from gateway.proxy.upstream_auth import UpstreamAuthError

log = logging.getLogger("gateway.proxy")

BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
CHUNK = 64 * 1024


UNREACHABLE_ADDRESS = "The plugin's address is not reachable from the gateway"


class _BodyTooLarge(Exception):
    pass


def _count(ctx: ProxyContext, kind: str) -> None:
    """Count an upstream failure by kind (a fixed set of names)."""
    metrics.UPSTREAM_ERRORS.labels(ctx.installation.service_slug if ctx.installation else "-", kind).inc()


def _failed(ctx: ProxyContext, kind: str, error: GatewayError) -> GatewayError:
    _count(ctx, kind)
    return error


async def _counted(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The caller's body, passed on as it arrives, stopped the moment it passes the limit."""
    sent = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        sent += len(chunk)
        if limit and sent > limit:
            raise _BodyTooLarge
        yield chunk


def _identity_headers(ctx: ProxyContext, rt: ProxyRuntime) -> dict[str, str]:
    principal, installation = ctx.principal, ctx.installation
    assert principal is not None and installation is not None and ctx.role is not None
    headers = {
        "X-Gateway-Space-Id": str(ctx.space_id),
        "X-Gateway-Installation-Id": str(installation.id),
        "X-Gateway-Assertion": rt.signer.assertion(
            subject=principal.subject, audience=ctx.slug, space_id=str(ctx.space_id),
            installation_id=str(installation.id), role=ctx.role),
    }
    if principal.user_id is not None:
        headers["X-Gateway-User-Id"] = str(principal.user_id)
    return headers


def _forwarded_headers(request: web.Request) -> dict[str, str]:
    prior = request.headers.get("X-Forwarded-For")
    remote = request.remote or ""
    return {
        "X-Forwarded-For": f"{prior}, {remote}" if prior else remote,
        "X-Forwarded-Proto": request.scheme,
        "X-Forwarded-Host": request.host,
        REQUEST_ID_HEADER: request_id_of(request),
        # The caller's trace when it sent a valid one, else a new trace (the same one is logged).
        TRACEPARENT: traceparent_of(request),
    }


async def _open_upstream(ctx: ProxyContext, rt: ProxyRuntime, target: URL,
                         headers: CIMultiDict[str]) -> aiohttp.ClientResponse:
    request, route = ctx.request, ctx.match.route  # type: ignore[union-attr]
    options = route.options
    limit = int(options.get("max_body_bytes", rt.settings.proxy_max_body_bytes))
    if limit and request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("The request body is larger than this route accepts")
    has_body = request.body_exists
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=float(options.get("connect_timeout", rt.settings.upstream_connect_timeout)),
        sock_read=float(options.get("timeout", rt.settings.upstream_timeout)))
    retry_on_401 = not has_body and request.method in BODILESS_METHODS
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
                data=_counted(request, limit) if has_body else None)
        except _BodyTooLarge:
            raise PayloadTooLarge("The request body is larger than this route accepts") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise _failed(ctx, "timeout", GatewayTimeout("The plugin did not answer in time")) from None
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc.__cause__, _BodyTooLarge) or isinstance(exc.__context__, _BodyTooLarge):
                raise PayloadTooLarge("The request body is larger than this route accepts") from None
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


async def forward(ctx: ProxyContext) -> web.StreamResponse:
    request, rt = ctx.request, runtime_of(ctx.request)
    assert ctx.match is not None
    # The query from the request line itself: yarl's parsed form re-normalizes escapes (%2F → /).
    raw_query = request.raw_path.partition("?")[2]
    target = URL(ctx.match.upstream_url(raw_query), encoded=True)
    if not rt.settings.allow_private_upstreams and literal_address_refused(target.raw_host or ""):
        raise _failed(ctx, "address_refused", BadGateway(UNREACHABLE_ADDRESS))
    headers = upstream_request_headers(request.headers)
    headers.update(_forwarded_headers(request))
    headers.update(_identity_headers(ctx, rt))

    started = time.perf_counter()
    upstream = await _open_upstream(ctx, rt, target, headers)
    ctx.upstream_status, ctx.upstream_headers = upstream.status, upstream.headers
    capture = ctx.capture
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=downstream_response_headers(upstream.headers))
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
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection,
            # so the caller cannot take a truncated body for a complete one.
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
    finally:
        ctx.upstream_seconds = time.perf_counter() - started
        upstream.release()
