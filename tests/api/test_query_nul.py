"""A NUL character in a query parameter is refused with 422 naming it (schemathesis found
`GET /services?category=...%00` answering 500: PostgreSQL's text cannot hold NUL)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.factories import Factory


@pytest.mark.parametrize("name", ["category", "q", "status"])
async def test_a_nul_in_a_query_parameter_is_a_422(client: TestClient, make: Factory, name: str) -> None:
    response = await client.get("/api/v1/services", params={name: "a\x00b"}, headers=await make.admin())
    assert response.status == 422, await response.text()
    assert (await response.json())["errors"] == [{"field": name, "message": "must not contain NUL characters"}]
