"""The OpenAPI document says what the handlers do: null is offered exactly where it is taken,
every status a path can answer is listed, and the links and ids it declares resolve.

scripts/schemathesis fuzzes the served document against the demo; these are the rules it found
broken, held here without a server (the models are the handlers' validation)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import gateway.api  # noqa: F401  (registers every endpoint)
from gateway.api.openapi import build_document
from gateway.api.registry import ENDPOINTS, Endpoint
from gateway.settings import Settings

DOCUMENT = build_document()
SCHEMAS = DOCUMENT["components"]["schemas"]
BODY_ENDPOINTS = [ep for ep in ENDPOINTS if ep.body_adapter is not None]


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = DOCUMENT["paths"]["/api/v1" + ep.path][ep.method.lower()]
    return op


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _offers_null(schema: dict[str, Any]) -> bool:
    schema = _resolve(schema)
    if schema.get("type") == "null" or "null" in (schema.get("type") if isinstance(schema.get("type"), list) else []):
        return True
    return any(_offers_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def _object_schemas(ep: Endpoint) -> list[tuple[dict[str, Any], Any]]:
    """The body's object schema (a list body: its item's), and how to wrap a member for sending."""
    schema = _resolve(_operation(ep)["requestBody"]["content"]["application/json"]["schema"])
    if schema.get("type") == "array":
        return [(_resolve(schema["items"]), lambda body: [body])]
    return [(schema, lambda body: body)]


def _null_cases() -> list[Any]:
    cases = []
    for ep in BODY_ENDPOINTS:
        for schema, wrap in _object_schemas(ep):
            for name, prop in schema.get("properties", {}).items():
                cases.append(pytest.param(ep, (name,), _offers_null(prop), wrap,
                                          id=f"{ep.method} {ep.path} {name}"))
                nested = _resolve(prop) if "$ref" in prop else None
                for sub, sub_prop in (nested or {}).get("properties", {}).items():
                    cases.append(pytest.param(ep, (name, sub), _offers_null(sub_prop), wrap,
                                              id=f"{ep.method} {ep.path} {name}.{sub}"))
    return cases


def _body_with_null(path: tuple[str, ...]) -> dict[str, Any]:
    body: Any = None
    for name in reversed(path):
        body = {name: body}
    result: dict[str, Any] = body
    return result


@pytest.mark.parametrize(("ep", "path", "nullable", "wrap"), _null_cases())
def test_null_is_offered_exactly_where_it_is_taken(ep: Endpoint, path: tuple[str, ...], nullable: bool,
                                                    wrap: Any) -> None:
    """Sending null for one member: refused naming it iff the document does not offer null there.
    (Errors about other members, say a missing required one, do not matter here.)"""
    from pydantic import ValidationError

    assert ep.body_adapter is not None
    raw = json.dumps(wrap(_body_with_null(path)))
    try:
        ep.body_adapter.validate_json(raw, strict=True, context=Settings())
        refused = False
    except ValidationError as exc:
        refused = any(tuple(str(p) for p in e["loc"] if not isinstance(p, int))[: len(path)] == path
                      for e in exc.errors())
    assert refused != nullable, (
        f"the document {'offers' if nullable else 'refuses'} null for {'.'.join(path)}, "
        f"the handler {'refuses' if refused else 'takes'} it")


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda ep: f"{ep.method} {ep.path}")
def test_every_status_an_operation_can_answer_is_listed(ep: Endpoint) -> None:
    listed = {int(code) for code in _operation(ep)["responses"]}
    expected = {ep.status}
    if ep.body is not None:
        expected |= {400, 413, 415, 422}
    if ep.query is not None:
        expected |= {422}  # a bad ?limit= or ?cursor=
    if not ep.public:
        expected |= {401, 429, 503}
    if ep.path_params:
        expected |= {404}
    if "{space_id}" in ep.path:
        expected |= {403}
    assert expected <= listed, sorted(expected - listed)
    for code, response in _operation(ep)["responses"].items():
        if int(code) >= 400:
            # One shared Problem schema, as application/problem+json.
            shared = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            assert shared["content"] == {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}


def test_operation_ids_are_unique_and_links_name_them() -> None:
    ops = {op["operationId"]: (path, op) for path, item in DOCUMENT["paths"].items() for op in item.values()}
    assert len(ops) == sum(len(item) for item in DOCUMENT["paths"].values())
    for path, item in DOCUMENT["paths"].items():
        for op in item.values():
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    _, target = ops[link["operationId"]]
                    names = {p["name"] for p in target["parameters"] if p["in"] == "path"}
                    # Every parameter a link fills is one of the target's; only the space (the
                    # caller's own) may be left for the caller to fill.
                    assert set(link.get("parameters", {})) <= names, (path, link)
                    assert names - set(link.get("parameters", {})) <= {"space_id"}, (path, link)


def test_creations_document_their_location() -> None:
    for ep in ENDPOINTS:
        if ep.status == 201:
            headers = _operation(ep)["responses"]["201"]["headers"]
            assert "Location" in headers and "X-Request-ID" in headers, ep.path
