"""The one error hierarchy of the gateway, and the table that maps lower layers' errors onto it.

`gateway.middleware.problem_middleware` is the only place that renders these as
application/problem+json (RFC 9457).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from auth import errors as auth_errors
from db import errors as db_errors

PROBLEM_BASE = "https://plugin-gateway.dev/problems/"


class GatewayError(Exception):
    # Each class's own; an instance may carry others (an aiohttp HTTPException's, middleware.py).
    status: int = 500
    type: str = "about:blank"
    title: str = "Internal Server Error"
    headers: dict[str, str]

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {}


class BadRequest(GatewayError):
    status, type, title = 400, PROBLEM_BASE + "bad-request", "Bad Request"


class FieldError(GatewayError):
    """A request problem tied to named input fields."""

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors

    def body(self) -> dict[str, object]:
        return {"errors": self.errors}


class MalformedRequest(FieldError):
    status, type, title = 400, PROBLEM_BASE + "bad-request", "Bad Request"


class ValidationFailed(FieldError):
    status, type, title = 422, PROBLEM_BASE + "validation", "Unprocessable Content"


class Unauthenticated(GatewayError):
    status, type, title = 401, PROBLEM_BASE + "unauthenticated", "Unauthorized"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or "Missing or invalid credentials", headers={"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    status, type, title = 403, PROBLEM_BASE + "forbidden", "Forbidden"


class NotFound(GatewayError):
    status, type, title = 404, PROBLEM_BASE + "not-found", "Not Found"


class MethodNotAllowed(GatewayError):
    status, type, title = 405, PROBLEM_BASE + "method-not-allowed", "Method Not Allowed"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__("Method not allowed here", headers={"Allow": ", ".join(allowed)})


class RequestTimeout(GatewayError):
    """The caller's request body stopped arriving, or arrived too slowly (the proxy's body deadlines)."""

    status, type, title = 408, PROBLEM_BASE + "request-timeout", "Request Timeout"


class Conflict(GatewayError):
    status, type, title = 409, PROBLEM_BASE + "conflict", "Conflict"


class RateLimited(GatewayError):
    status, type, title = 429, PROBLEM_BASE + "rate-limited", "Too Many Requests"


class PayloadTooLarge(GatewayError):
    status, type, title = 413, PROBLEM_BASE + "payload-too-large", "Content Too Large"


class UnsupportedMediaType(GatewayError):
    status, type, title = 415, PROBLEM_BASE + "unsupported-media-type", "Unsupported Media Type"


class ServiceUnavailable(GatewayError):
    status, type, title = 503, PROBLEM_BASE + "unavailable", "Service Unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5) -> None:
        super().__init__(detail or "A backing service is unavailable; try again shortly",
                         headers={"Retry-After": str(retry_after)})


class BadGateway(GatewayError):
    status, type, title = 502, PROBLEM_BASE + "bad-gateway", "Bad Gateway"


class GatewayTimeout(GatewayError):
    status, type, title = 504, PROBLEM_BASE + "gateway-timeout", "Gateway Timeout"


def translate(exc: BaseException) -> GatewayError | None:
    """Map an error from a lower layer onto the hierarchy, walking its MRO like Starlette does."""
    if isinstance(exc, GatewayError):
        return exc
    for klass in type(exc).__mro__:
        factory = _TRANSLATIONS.get(klass)
        if factory is not None:
            return factory(exc)
    return None


_TRANSLATIONS: dict[type[BaseException], Callable[[Any], GatewayError]] = {
    db_errors.NotFound: lambda e: NotFound(str(e) or None),
    db_errors.Conflict: lambda e: Conflict(str(e) or None),
    db_errors.Invalid: lambda e: ValidationFailed([{"field": e.field, "message": e.message}]),
    db_errors.DatabaseUnavailable: lambda e: ServiceUnavailable("The database is unavailable; try again shortly"),
    auth_errors.Unauthenticated: lambda e: Unauthenticated(str(e) or None),
    auth_errors.Forbidden: lambda e: Forbidden(str(e) or None),
    # Driver errors that escaped a repository: never show their text (it names tables and SQL).
    asyncpg.UniqueViolationError: lambda e: Conflict("A resource with these values already exists"),
    asyncpg.ForeignKeyViolationError: lambda e: ValidationFailed([{"field": "body", "message": "refers to a row that does not exist"}]),
    asyncpg.PostgresConnectionError: lambda e: ServiceUnavailable("The database is unavailable; try again shortly"),
    # 57xxx: the server is shutting down, crashed, or not accepting connections yet.
    asyncpg.OperatorInterventionError: lambda e: ServiceUnavailable("The database is unavailable; try again shortly"),
    # asyncpg's state machine, broken by a connection lost mid-call during an outage.
    asyncpg.InternalClientError: lambda e: ServiceUnavailable("The database is unavailable; try again shortly"),
    asyncpg.InterfaceError: lambda e: ServiceUnavailable("The database is unavailable; try again shortly"),
    ConnectionError: lambda e: ServiceUnavailable(),
    OSError: lambda e: ServiceUnavailable(),
}
