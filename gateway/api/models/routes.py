"""API routes (service-wide and per installation) as the API reads and writes them.

A route's `route_path` is a template (`/reports/{id}`, `/files/{rest:path}`) and its
`target_url` may reuse the template's parameters in its path. Field-level rules live on the
field types; the rules that compare fields (`route_problems`) run on the whole row, so a PATCH
is judged as the row it would leave behind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, RootModel, StringConstraints, ValidationInfo, field_validator

from gateway.api.fields import (
    URL_MAX, AuthType, HttpMethod, NotNull, PositiveInt, RequestModel, ResponseModel, http_url,
)
from gateway.api.models.common import AuthConfig
from gateway.settings import Settings
from routing.templates import TemplateError, compile_target, join_target, parse_template

# RFC 3986 pchar: what a path segment may hold without being percent-encoded. The proxy's parser
# takes any static text; the API is stricter so that stored templates are plain URL paths.
_STATIC: Final = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+$")
_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}")
# What a placeholder becomes when the URL is parsed or checked for upstream safety.
PLACEHOLDER_DUMMY: Final = "x"
# Stands in for a missing api_base_url so a relative target's placeholders can still be judged.
_BASE_STANDIN: Final = "https://api-base.invalid"


def template_parameters(template: str) -> tuple[str, ...]:
    """The parameter names of a route template, as the proxy's route table parses it."""
    try:
        parsed = parse_template(template)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    for segment in parsed.statics:
        if segment is not None and not _STATIC.match(segment):
            raise ValueError(f"segment '{segment}' holds characters a URL path cannot")
    return parsed.names


def fill_placeholders(target_url: str) -> str:
    return _PLACEHOLDER.sub(PLACEHOLDER_DUMMY, target_url)


def _route_path(value: str) -> str:
    template_parameters(value)
    return value


def _target_url(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    filled = fill_placeholders(value)
    if "{" in filled or "}" in filled:
        raise ValueError("placeholders must be written {name} (or {name:path})")
    if "#" in value:
        raise ValueError("must not carry a fragment")
    query = value.find("?")
    if query >= 0 and "{" in value[query:]:
        raise ValueError("placeholders may appear only in the path")
    if value.startswith("/"):
        if value.startswith("//"):
            raise ValueError("a relative target must be a path starting with a single '/'")
        return value
    scheme_end = value.find("://")
    if scheme_end >= 0:
        # Everything up to the first '/', '?' or '#' after "://" is scheme, host and port: a caller's
        # value there would choose the upstream host.
        authority_end = re.search(r"[/?#]|$", value[scheme_end + 3:])
        assert authority_end is not None
        if "{" in value[: scheme_end + 3 + authority_end.start()]:
            raise ValueError("placeholders may appear only in the path, never in the scheme, host or port")
    try:
        http_url(filled)
    except ValueError as exc:
        message = str(exc)
        if message == "must be an absolute http(s) URL":
            message += " or a path starting with '/'"
        raise ValueError(message) from None
    return value


RoutePath = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_route_path)]
TargetUrl = Annotated[str, StringConstraints(min_length=1, max_length=URL_MAX), AfterValidator(_target_url)]
Seconds = Annotated[float, Field(gt=0)]
_DEFAULT_CACHE_MAX_TTL: Final = Settings().cache_max_ttl


class RouteOptions(RequestModel):
    """Settings beyond the seed's columns; an absent (or null) option takes the gateway's default."""

    connect_timeout: Annotated[Seconds, Field(le=300)] | None = None
    timeout: Annotated[Seconds, Field(le=3600)] | None = None
    max_body_bytes: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None
    cache_scope: Literal["caller", "space"] | None = None
    stale_if_error: Annotated[int | None, Field(ge=1, le=86400, description=(
        "Seconds past its TTL a cached answer is kept, to be served (X-Cache-Status: STALE) when "
        "the upstream fails or its breaker is open"))] = None
    breaker: Annotated[bool | None, Field(description=(
        "false: no circuit breaker for this route (GATEWAY_BREAKER_FAILURES failures in a row "
        "otherwise pause calls to the installation's upstream for GATEWAY_BREAKER_OPEN_SECONDS)"))] = None


class _RouteWritable(RequestModel):
    auth_type: AuthType | None = None
    auth_config: AuthConfig = Field(default_factory=dict)
    rate_limit: PositiveInt | None = None
    rate_limit_window: PositiveInt | None = None
    cache_enabled: bool = False
    cache_ttl: Annotated[PositiveInt | None, Field(description=(
        "Seconds an answer is kept. At most GATEWAY_CACHE_MAX_TTL (a setting of the gateway, "
        "default 86400): a larger value is refused with 422."))] = None
    options: RouteOptions = Field(default_factory=RouteOptions)

    @field_validator("cache_ttl")
    @classmethod
    def _cache_ttl_bound(cls, value: int | None, info: ValidationInfo) -> int | None:
        # The bound is a setting: the validation context is the gateway's Settings (the
        # setting's default when validated without one).
        limit = getattr(info.context, "cache_max_ttl", None) or _DEFAULT_CACHE_MAX_TTL
        if value is not None and value > limit:
            raise ValueError(f"must be at most {limit} seconds (GATEWAY_CACHE_MAX_TTL)")
        return value

    def values(self) -> dict[str, Any]:
        """The fields sent, as columns; options keep only the ones given a value."""
        values = self.model_dump(exclude_unset=True)
        if "options" in values:
            values["options"] = self.options.model_dump(exclude_none=True)
        return values


class RouteCreate(_RouteWritable):
    route_path: RoutePath
    method: HttpMethod
    target_url: TargetUrl


class RoutePatch(_RouteWritable):
    """Only the fields sent change; the cross-field rules are checked on the merged row."""

    route_path: NotNull[RoutePath] = None
    method: NotNull[HttpMethod] = None
    target_url: NotNull[TargetUrl] = None

    @field_validator("cache_enabled", "auth_config", "options", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value


def route_problems(row: Mapping[str, Any], api_base_url: str | None) -> list[dict[str, str]]:
    """Rules that compare fields, judged on the whole row (after a PATCH is merged in)."""
    problems = []
    for given, needed in (("rate_limit", "rate_limit_window"), ("rate_limit_window", "rate_limit")):
        if row.get(given) is not None and row.get(needed) is None:
            problems.append({"field": needed, "message": f"is required when {given} is set"})
    if row.get("cache_enabled") and row.get("cache_ttl") is None:
        problems.append({"field": "cache_ttl", "message": "is required when cache_enabled is true"})
    target: str = row["target_url"]
    if target.startswith("/") and not api_base_url:
        problems.append({"field": "target_url",
                         "message": "is a relative path, but the service has no api_base_url"})
    try:
        defined = template_parameters(row["route_path"])
    except ValueError as exc:
        return problems + [{"field": "route_path", "message": str(exc)}]
    try:
        # The proxy's own check, so the API never stores a route its route table would drop.
        compile_target(join_target(api_base_url or _BASE_STANDIN, target), defined)
    except TemplateError as exc:
        problems.append({"field": "target_url", "message": str(exc)})
    return problems


class _RouteFields(ResponseModel):
    id: UUID
    service_id: UUID
    installation_id: UUID | None = None
    route_path: str
    method: str
    target_url: str
    auth_type: str | None = None
    rate_limit: int | None = None
    rate_limit_window: int | None = None
    cache_enabled: bool | None = None
    cache_ttl: int | None = None
    options: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Route(_RouteFields):
    """A route as its maintainers, the installation's space admins and platform admins see it."""

    auth_config: dict[str, Any] | None = None


class PublicRoute(_RouteFields):
    """A route as any other caller sees it: without `auth_config`."""


class RouteView(RootModel[Route | PublicRoute]):
    """Either shape; the handler picks one by building a `Route` or a `PublicRoute`."""

