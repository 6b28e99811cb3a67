"""The audit log's time filters take RFC 3339 date-times only (schemathesis found `until=0.5`
accepted as seconds since the epoch)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.factories import Factory


@pytest.mark.parametrize("value", ["0.5", "1700000000", "yesterday", "2026-01-01T00:00:00"])
async def test_a_time_that_is_not_rfc3339_with_an_offset_is_refused(client: TestClient, make: Factory,
                                                                    value: str) -> None:
    response = await client.get("/api/v1/audit-log", params={"until": value}, headers=await make.admin())
    assert response.status == 422 and "until" in await response.text()


async def test_an_rfc3339_time_is_taken(client: TestClient, make: Factory) -> None:
    response = await client.get("/api/v1/audit-log", params={"since": "2026-01-01T00:00:00+01:00"},
                                headers=await make.admin())
    assert response.status == 200, await response.text()
