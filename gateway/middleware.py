"""Cross-cutting middleware: request ids, the single place errors become problem+json, and the
one access log line of every request (the proxy adds its fields through ACCESS_FIELDS)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final
from uuid import UUID

import orjson
from aiohttp import web

from gateway.appkeys import SETTINGS
from gateway.client_address import client_address
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge, translate
from gateway.logs import ACCESS_LOG
from gateway.proxy.headers import traceparent_for

log = logging.getLogger("gateway")

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID: Final = web.RequestKey("request_id", str)
TRACEPARENT: Final = web.RequestKey("traceparent", str)
# Fields a handler adds to its request's access line (the proxy: service, route_id, upstream_ms...).
ACCESS_FIELDS: Final = web.RequestKey("access_fields", dict[str, Any])
CACHE_STATUS_HEADER: Final = "X-Cache-Status"
# nginx's convention for a request whose caller went away before it was answered.
CLIENT_CLOSED_REQUEST: Final = 499
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if _SANE_REQUEST_ID.match(sent) else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


def traceparent_of(request: web.Request) -> str:
    """The request's W3C traceparent: the caller's if valid, else one made up once per request."""
    traceparent = request.get(TRACEPARENT)
    if traceparent is None:
        traceparent = request[TRACEPARENT] = traceparent_for(request.headers)
    return traceparent


def problem_response(error: GatewayError, request_id: str) -> web.Response:
    body = {
        "type": error.type,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
        **error.body(),
    }
    response = web.Response(
        status=error.status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=error.headers,
    )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is larger than the configured limit")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(sorted(exc.allowed_methods))
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("No such resource")
    error = GatewayError(exc.reason)
    error.status, error.title, error.type = exc.status, exc.reason, "about:blank"
    return error


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors → problem+json, then one access line, whatever answered (or a cancellation)."""
    started = time.perf_counter()
    rid = request_id_of(request)
    status, response = CLIENT_CLOSED_REQUEST, None
    try:
        response = await _answer(request, handler, rid)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect raised by a handler
        status = exc.status
        raise
    finally:
        _log_access(request, status, response, time.perf_counter() - started)


async def _answer(request: web.Request, handler: Handler, rid: str) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc), rid)
    except ConnectionResetError:
        # The caller went away while we wrote to it: nobody is left to answer. A returned
        # response lets aiohttp drop the connection quietly (a raised error logs a traceback).
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception as exc:
        error = translate(exc)
        if error is None:
            # The traceback goes to the log, never to the caller.
            log.exception("unhandled error", extra={"request_id": rid})
            error = GatewayError("An unexpected error occurred")
        elif error.status >= 500:
            log.warning("%s: %s", type(exc).__name__, error.detail, extra={"request_id": rid})
        return problem_response(error, rid)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def _space_id(request: web.Request) -> str | None:
    """The path's space id when it is one: the field holds a UUID or nothing, never caller text."""
    try:
        return str(UUID(request.match_info.get("space_id", "")))
    except ValueError:
        return None


def _route_pattern(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _bytes_out(response: web.StreamResponse | None) -> int | None:
    """Bytes written for a response streamed by its handler (status line and headers included),
    else its body's Content-Length (aiohttp writes a returned response after this middleware)."""
    if response is None:
        return None
    if response.prepared and response.body_length:
        return response.body_length
    return response.content_length


def _remote(request: web.Request) -> str | None:
    """The client address (gateway.client_address: the one rule for logs, limits, forwarding)."""
    settings = request.config_dict.get(SETTINGS)
    if settings is None:  # an app without settings (a test's): no proxy is trusted
        return request.remote
    return client_address(request, settings.trusted_proxies)


def _log_access(request: web.Request, status: int, response: web.StreamResponse | None,
                seconds: float) -> None:
    """Never the path's query string nor header values: either may carry a caller's secret."""
    extra = request.get(ACCESS_FIELDS)
    fields: dict[str, Any] = {
        "request_id": request_id_of(request),
        "method": request.method,
        "route": _route_pattern(request),
        "service": None,
        "route_id": None,
        # The proxy's fields carry the space id it parsed already: no second UUID parse.
        "space_id": extra["space_id"] if extra and "space_id" in extra else _space_id(request),
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "upstream_ms": None,
        "cache": None,
        "bytes_in": request.content_length if request.content_length is not None else request.content.total_bytes,
        "bytes_out": _bytes_out(response),
        "remote": _remote(request),
        "traceparent": traceparent_of(request),
    }
    if extra:
        fields.update(extra)
    if response is not None and CACHE_STATUS_HEADER in response.headers:
        fields["cache"] = response.headers[CACHE_STATUS_HEADER]  # a HIT is set on the response only
    ACCESS_LOG.write(f"{request.method} {fields['route'] or '-'} {status}", fields)
