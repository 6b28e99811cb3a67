"""Declare API endpoints once: the route, the request and response models, the status.

The same declaration drives validation in the handler wrapper and the OpenAPI document
(gateway/api/openapi.py), so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.appkeys import SETTINGS
from gateway.errors import MalformedRequest, NotFound, UnsupportedMediaType, ValidationFailed

API_PREFIX = "/api/v1"
_PATH_PARAM = re.compile(r"\{(\w+)\}")

B = TypeVar("B")
Q = TypeVar("Q")


@dataclass(slots=True)
class Call(Generic[B, Q]):
    """What a handler receives: the request, its validated body and query, its path ids."""

    request: web.Request
    body: B
    query: Q
    ids: dict[str, UUID]
    location: str | None = None

    def __getitem__(self, name: str) -> UUID:
        return self.ids[name]


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: Any = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    public: bool = False
    errors: tuple[int, ...] = ()
    body_adapter: TypeAdapter[Any] | None = field(default=None, compare=False)
    response_adapter: TypeAdapter[Any] | None = field(default=None, compare=False)

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, *, summary: str, tag: str, body: Any = None,
             query: type[BaseModel] | None = None, response: Any = None, status: int = 200,
             public: bool = False, errors: tuple[int, ...] = ()) -> Callable[[Handler], Handler]:
    """Register a handler for `API_PREFIX + path`."""

    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(Endpoint(
            method, path, handler, summary, tag, body, query, response, status, public, errors,
            TypeAdapter(body) if body is not None else None,
            TypeAdapter(response) if response is not None else None,
        ))
        return handler

    return register


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        errors.append({"field": _field_name(prefix + loc), "message": message})
    return errors


# Deeper than any configuration a person writes, and far inside the limits of orjson (1024) and of
# pydantic's JSON parser: a body that nests deeper is refused up front (400), so neither a parser
# limit nor Python's recursion limit ever decides the answer.
MAX_JSON_DEPTH = 64


class _TooDeep(Exception):
    pass


def _find_nul(value: Any) -> tuple[str, ...] | None:
    """The path of the first string (or key) holding U+0000, walking without recursion; raises
    _TooDeep past MAX_JSON_DEPTH levels of arrays and objects."""
    # PostgreSQL text and jsonb cannot hold U+0000: refuse it up front, naming the field.
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return path
        elif isinstance(node, (dict, list)):
            if len(path) >= MAX_JSON_DEPTH:
                raise _TooDeep
            items = node.items() if isinstance(node, dict) else ((str(i), item) for i, item in enumerate(node))
            children = []
            for key, item in items:
                if "\x00" in key:
                    return path + (key,)
                children.append((item, path + (key,)))
            stack.extend(reversed(children))  # depth first, in document order
    return None


async def read_body(request: web.Request, adapter: TypeAdapter[Any]) -> Any:
    if not request.body_exists:
        raise ValidationFailed([{"field": "body", "message": "a JSON body is required"}])
    mime = request.content_type
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        raise UnsupportedMediaType("Send the body as application/json")
    raw = await request.read()  # bounded by the app's client_max_size (→ 413)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting past 1024 levels as a decode error of its own.
        message = (f"nests deeper than {MAX_JSON_DEPTH} levels" if any(w in str(exc).lower() for w in ("depth", "recursion"))
                   else "is not valid JSON")
        raise MalformedRequest([{"field": "body", "message": message}]) from None
    try:
        nul = _find_nul(data)
    except _TooDeep:
        raise MalformedRequest([{"field": "body", "message": f"nests deeper than {MAX_JSON_DEPTH} levels"}]) from None
    if nul is not None:
        raise ValidationFailed([{"field": _field_name(nul), "message": "must not contain NUL characters"}])
    try:
        # JSON mode with strict models: no "1" → 1 coercion, but ISO strings still become UUIDs.
        # The app's Settings as the validation context: bounds that are settings (cache_max_ttl).
        return adapter.validate_json(raw, strict=True, context=request.app.get(SETTINGS))
    except ValidationError as exc:
        raise ValidationFailed(validation_errors(exc)) from None


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    known = {name: request.query[name] for name in model.model_fields if name in request.query}
    # PostgreSQL's text cannot hold NUL (a query with one would fail in the database): refused as
    # in bodies, naming the parameter.
    nul = [{"field": name, "message": "must not contain NUL characters"} for name, value in known.items()
           if "\x00" in value]
    if nul:
        raise ValidationFailed(nul)
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        raise ValidationFailed(validation_errors(exc)) from None


def parse_ids(request: web.Request, names: list[str]) -> dict[str, UUID]:
    ids = {}
    for name in names:
        try:
            ids[name] = UUID(request.match_info[name])
        except ValueError:
            raise NotFound("No such resource") from None  # a non-UUID id names nothing
    return ids


def _wrap(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ids = parse_ids(request, ep.path_params)
        body = await read_body(request, ep.body_adapter) if ep.body_adapter else None
        query = parse_query(request, ep.query) if ep.query else None
        call: Call[Any, Any] = Call(request, body, query, ids)
        result = await ep.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        if ep.status == 204 or ep.response_adapter is None:
            return web.Response(status=204)
        # Serializing through the declared model is what keeps undeclared columns
        # (credentials, key hashes) out of every response.
        payload = ep.response_adapter.dump_json(ep.response_adapter.validate_python(result))
        response = web.Response(status=ep.status, body=payload, content_type="application/json")
        if ep.status == 201:
            response.headers["Location"] = call.location or f"{request.path}/{result['id']}"
        return response

    return handle


def add_routes(app: web.Application) -> None:
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, API_PREFIX + ep.path, _wrap(ep))
