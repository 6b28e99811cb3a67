"""The OpenAPI 3.1 document, generated from the endpoint declarations and their models."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.api.registry import API_PREFIX, ENDPOINTS, Endpoint, endpoint

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "request_id"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"],
                   "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}
ERROR_TEXT = {400: "Malformed request (not HTTP/1.1, a line over 8190 bytes, over 100 headers; a body that is not JSON or nested too deep)", 401: "Missing or invalid credentials",
              403: "Not allowed", 404: "Not found", 409: "Conflict", 413: "Body too large",
              415: "Body is not JSON", 422: "Validation failed (the fields are named in `errors`)",
              429: "Too many failed credentials from this client address",
              503: "A backing service (the database) is unavailable"}
_STRING = {"type": "string"}
HEADERS = {
    "X-Request-ID": {"description": "The caller's request id if it sent a sane one, else a new one",
                     "required": True, "schema": _STRING},
    "Location": {"description": "The URL of what was created", "required": True, "schema": _STRING},
    "WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": _STRING},
    "Retry-After": {"description": "Seconds to wait before trying again", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}
ERROR_HEADERS = {401: ["WWW-Authenticate"], 429: ["Retry-After"], 503: ["Retry-After"]}


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}

# Operations that take a resource another path creates, beyond the path's own children (below).
_CROSS_LINKS: dict[tuple[str, str], list[tuple[str, str]]] = {
    # An instance service is what .../instance-services/{service_id}/assignments manages.
    ("POST", "/spaces/{space_id}/instances/{instance_id}/services"):
        [("/spaces/{space_id}/instance-services/{service_id}", "service_id")],
}


# Links that carry an answer into the next request's body: an approved service is what a space
# installs (the space is the caller's own, so it is not taken from the answer).
_BODY_LINKS: dict[tuple[str, str], list[tuple[str, str, dict[str, str]]]] = {
    ("PUT", "/services/{service_id}/status"):
        [("POST", "/spaces/{space_id}/installations", {"service_id": "$response.body#/id"})],
}
# The field of a creation's answer that its URL uses, where that is not `id`.
_URL_FIELD = {"plugin_id": "plugin_id"}  # an assignment is named by its plugin


def operation_id(ep: Endpoint) -> str:
    """The handler's name, qualified by its module where two modules use the same name."""
    name = ep.handler.__name__
    if sum(other.handler.__name__ == name for other in ENDPOINTS) > 1:
        return f"{ep.handler.__module__.rsplit('.', 1)[-1]}_{name}"
    return name


def error_codes(ep: Endpoint) -> set[int]:
    """Every status other than the success one that the operation can answer."""
    codes = set(ep.errors) | {400}  # any request: the HTTP parser refuses an overlong URL (connections.py)
    if ep.body is not None:
        codes |= {400, 413, 415, 422}  # not JSON or nested too deep; too large; not JSON at all; schema
    if ep.query is not None:
        codes |= {422}  # ?limit=0, ?cursor=<not one this API issued>, a bad enum value
    if not ep.public:
        # Credentials: missing or bad (past the client address's failure budget: 429); the
        # database answers who the caller is, so its outage is a 503.
        codes |= {401, 429, 503}
    if ep.path_params:
        codes |= {404}  # a path id that is not a UUID, or names nothing the caller may see
    if "{space_id}" in ep.path:
        codes |= {403}  # not a member of the space, or a role below the one needed
    return codes


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in ep.path_params
    ]
    if ep.query is not None:
        schema = ep.query.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                           "schema": prop})
    return params


def _links(ep: Endpoint) -> dict[str, Any]:
    """OpenAPI links from a creation to the operations on what it created: the new row's id fills
    the next path parameter, the creation's own path ids the rest."""
    targets = [(ep.path + "/{" + name + "}", name) for name in
               {o.path[len(ep.path) + 2:].split("}", 1)[0] for o in ENDPOINTS
                if o.path.startswith(ep.path + "/{")}]
    targets += _CROSS_LINKS.get((ep.method, ep.path), [])
    links: dict[str, Any] = {}
    for prefix, name in targets:
        for other in ENDPOINTS:
            if other.path != prefix and not other.path.startswith(prefix + "/"):
                continue
            values = {name: f"$response.body#/{_URL_FIELD.get(name, 'id')}"}
            values |= {p: f"$request.path.{p}" for p in other.path_params if p in ep.path_params and p != name}
            if set(values) != set(other.path_params):
                continue
            links[operation_id(other)] = {"operationId": operation_id(other), "parameters": values}
    return links


def build_document() -> dict[str, Any]:
    models: set[tuple[Any, JsonSchemaMode]] = {(ep.body, "validation") for ep in ENDPOINTS if ep.body is not None}
    models |= {(ep.response, "serialization") for ep in ENDPOINTS if ep.response is not None}
    keyed = [(model, mode) for model, mode in models if isinstance(model, type) and issubclass(model, BaseModel)]
    refs, defs = models_json_schema(sorted(keyed, key=lambda m: (m[0].__name__, m[1])),
                                    ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA

    def schema_of(model: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        if (model, mode) in refs:
            return refs[(model, mode)]
        # List bodies (discovery sync) and other non-model types: their nested models join the
        # shared components, so every $ref resolves in one place.
        schema = TypeAdapter(model).json_schema(mode=mode, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        return schema

    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag],
                              "operationId": operation_id(ep), "parameters": _parameters(ep)}
        if ep.public:
            op["security"] = []
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of(ep.body, "validation")}}}
        ok: dict[str, Any] = {"description": {201: "Created", 204: "No Content"}.get(ep.status, "OK"),
                              "headers": _headers("X-Request-ID")}
        if ep.response is not None and ep.status != 204:
            ok["content"] = {"application/json": {"schema": schema_of(ep.response, "serialization")}}
        if ep.status == 201:
            ok["headers"] = _headers("X-Request-ID", "Location")
            links = _links(ep)
        else:
            links = {}
        for method, path, body in _BODY_LINKS.get((ep.method, ep.path), []):
            target = next(o for o in ENDPOINTS if (o.method, o.path) == (method, path))
            links[operation_id(target)] = {"operationId": operation_id(target), "requestBody": body}
        if links:
            ok["links"] = links
        if ep.public:
            ok["headers"] = {}  # the document itself is static: no per-request header is promised
        responses = {str(ep.status): ok}
        for code in sorted(error_codes(ep)):
            responses[str(code)] = {"$ref": f"#/components/responses/Problem{code}"}
        op["responses"] = responses
        paths.setdefault(API_PREFIX + ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Plugin Gateway API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "headers": HEADERS, "responses": {
            f"Problem{code}": {"description": text,
                               "headers": _headers("X-Request-ID", *ERROR_HEADERS.get(code, [])),
                               "content": {"application/problem+json": {
                                   "schema": {"$ref": "#/components/schemas/Problem"}}}}
            for code, text in ERROR_TEXT.items()}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A platform JWT, or an API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{"bearer": []}, {"apiKey": []}],
    }


@endpoint("GET", "/openapi.json", summary="This document", tag="meta", public=True)
async def openapi_json(call: Any) -> web.Response:
    return web.Response(body=_document(), content_type="application/json")


@functools.cache
def _document() -> bytes:
    # Endpoints are all registered at import time, so the document is built once.
    return orjson.dumps(build_document())
