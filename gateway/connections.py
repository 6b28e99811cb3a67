"""What one caller connection may take from a gateway process: the server side of "hostile
callers" (contract revision 3). Every bound here is per process.

- Header deadline (GATEWAY_CLIENT_HEADER_TIMEOUT): aiohttp's keep-alive timer is one timer per
  connection, armed at accept (aiohttp >= 3.14) and again at the end of every response, and it
  closes the connection when it fires while the handler still waits for a request's headers —
  partial headers included, since the timer is not pushed back by bytes that arrive. That is the
  contract's deadline exactly, so it is the keep-alive timeout. The price: an idle kept-alive
  connection is closed after the same time, so a load balancer in front must use a shorter idle
  timeout (README).
- Connection cap (GATEWAY_MAX_CONNECTIONS): a connection beyond it is closed as soon as it is
  accepted, before a byte is read.
- Open files: the cap is worthless if accept() fails first (EMFILE), so the soft RLIMIT_NOFILE is
  raised to the hard one, and the cap lowered, with a warning, when even that is too small.

The body deadlines (GATEWAY_CLIENT_BODY_TIMEOUT, _MIN_RATE) are enforced where the body is read,
in the proxy (gateway/proxy/forward.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from gateway.errors import BadRequest
from gateway.middleware import problem_response
from gateway.settings import Settings

log = logging.getLogger("gateway.connections")

# Options of the HTTP server (aiohttp's RequestHandler) that do not depend on settings, shared by
# `gateway serve` and the tests' servers.
SERVER_OPTIONS: dict[str, Any] = {
    "handler_cancellation": True,  # a caller who disconnects cancels its handler and the upstream call
    "auto_decompress": False,  # proxied bodies pass as sent, Content-Encoding and all
    "max_line_size": 8190,  # request line and each header line
    "max_field_size": 8190,
    "max_headers": 100,
}
# Descriptors a process needs besides its caller connections: upstream connections (up to one
# per caller connection), PostgreSQL and Redis pools, log files, the listeners.
RESERVED_FILES = 256


def server_options(settings: Settings) -> dict[str, Any]:
    return {**SERVER_OPTIONS, "keepalive_timeout": settings.client_header_timeout}


class CappedRequestHandler(RequestHandler):
    """aiohttp's connection handler, refusing the connection when the process holds its cap."""

    __slots__ = ("_refused",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, CappedServer)
        self._refused = len(server._connections) >= server.max_connections
        if self._refused:
            server.refused += 1
            transport.close()  # nothing was read: the caller sees the connection closed at once
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A message the HTTP parser refused (a line over 8190 bytes, over 100 headers, a byte
        that is not HTTP) answers problem+json like every other error, as gunicorn does with 400,
        and is logged as one line: aiohttp's own answer is text/plain echoing the caller's bytes,
        after a traceback in the error log that any client could repeat at will."""
        if not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            detail = f"The request line or a header is longer than {SERVER_OPTIONS['max_line_size']} bytes"
        elif "Too many headers" in str(exc):
            detail = f"The request has more than {SERVER_OPTIONS['max_headers']} headers"
        else:
            detail = "The request is not valid HTTP/1.1"
        log.info("refused a malformed request from %s: %s", request.remote, detail)
        # No header of the request was read: its own X-Request-ID is not known.
        response = problem_response(BadRequest(detail), uuid.uuid4().hex)
        response.force_close()
        return response


class CappedServer(Server):
    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.refused = 0

    def __call__(self) -> RequestHandler:
        handler = CappedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler._refused = False
        return handler


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server applies the connection bounds of `settings`."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=settings.drain_seconds,
                         **server_options(settings), **kwargs)
        self._max_connections = settings.max_connections

    async def _make_server(self) -> Server:
        # As web.AppRunner._make_server, with the capped server in place of app._make_handler's.
        app = self.app
        app._set_loop(asyncio.get_running_loop())
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return CappedServer(app._handle, request_factory=app._make_request, loop=asyncio.get_running_loop(),
                            max_connections=self._max_connections, **self._kwargs)


def fit_open_file_limit(max_connections: int) -> int:
    """Raise the soft open-file limit as far as the hard one allows; return the connection cap
    that fits in it (each caller connection may need an upstream one too)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise, nothing to check
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max_connections + RESERVED_FILES
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    fits = max(1, (soft - RESERVED_FILES) // 2)
    if fits < max_connections:
        log.warning("GATEWAY_MAX_CONNECTIONS=%d does not fit in the open-file limit (%d, hard %s): "
                    "using %d; raise the limit (ulimit -n, LimitNOFILE=) to allow more",
                    max_connections, soft, hard, fits)
        return fits
    return max_connections
