"""The OpenAPI 3.1 document, generated from the endpoint declarations and their models."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

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
ERROR_TEXT = {400: "Malformed request", 401: "Missing or invalid credentials", 403: "Not allowed",
              404: "Not found", 409: "Conflict", 413: "Body too large", 415: "Body is not JSON",
              422: "Validation failed", 503: "Database unavailable"}


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


def build_document() -> dict[str, Any]:
    models = {(ep.body, "validation") for ep in ENDPOINTS if ep.body is not None}
    models |= {(ep.response, "serialization") for ep in ENDPOINTS if ep.response is not None}
    keyed = [m for m in models if isinstance(m[0], type)]
    refs, defs = models_json_schema(sorted(keyed, key=lambda m: (m[0].__name__, m[1])),
                                    ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA

    def schema_of(model: Any, mode: str) -> dict[str, Any]:
        if (model, mode) in refs:
            return refs[(model, mode)]
        # List bodies (discovery sync) and other non-model types: their nested models join the
        # shared components, so every $ref resolves in one place.
        schema = TypeAdapter(model).json_schema(mode=mode, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
        schemas.update(schema.pop("$defs", {}))
        return schema

    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag],
                              "operationId": ep.handler.__name__, "parameters": _parameters(ep)}
        if ep.public:
            op["security"] = []
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of(ep.body, "validation")}}}
        ok: dict[str, Any] = {"description": "OK" if ep.status != 201 else "Created"}
        if ep.response is not None and ep.status != 204:
            ok["content"] = {"application/json": {"schema": schema_of(ep.response, "serialization")}}
        responses = {str(ep.status): ok}
        codes = set(ep.errors) | ({400, 413, 415, 422} if ep.body is not None else set())
        codes |= set() if ep.public else {401}
        codes |= {404} if ep.path_params else set()
        for code in sorted(codes):
            responses[str(code)] = {"description": ERROR_TEXT.get(code, "Error"), "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        op["responses"] = responses
        paths.setdefault(API_PREFIX + ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Plugin Gateway API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
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
