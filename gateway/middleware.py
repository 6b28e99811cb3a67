"""Cross-cutting middleware: request ids and the single place errors become problem+json."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web

from gateway.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge, translate

log = logging.getLogger("gateway")

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID: Final = web.RequestKey("request_id", str)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if _SANE_REQUEST_ID.match(sent) else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


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
    error.status, error.title, error.type = exc.status, exc.reason, "about:blank"  # type: ignore[misc]
    return error


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id_of(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc), rid)
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
