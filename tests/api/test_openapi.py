"""The OpenAPI document describes exactly the routes the app serves."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

from gateway.api.registry import API_PREFIX

UNDOCUMENTED = {"/healthz", "/readyz"}  # operational endpoints, outside /api/v1


async def test_document_paths_equal_app_routes(client: TestClient) -> None:
    response = await client.get("/api/v1/openapi.json")  # no credentials needed
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")

    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = set()
    for route in client.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or path in UNDOCUMENTED or not path.startswith(API_PREFIX):
            continue
        served.add((route.method, path))
    assert documented == served


async def test_every_reference_resolves_and_bodies_are_closed(client: TestClient) -> None:
    document = await (await client.get("/api/v1/openapi.json")).json()
    schemas = document["components"]["schemas"]
    text = str(document)
    for ref in set(re.findall(r"#/components/schemas/([^'\"]+)", text)):
        assert ref in schemas, ref
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body and "$ref" in body:
                model = schemas[body["$ref"].rsplit("/", 1)[1]]
                # Unknown fields are refused, and the document says so.
                assert model.get("additionalProperties") is False, (method, path)
