"""GATEWAY_CACHE_MAX_TTL: a route's cache_ttl above it is refused with 422 naming the field, on
service-wide and installation routes, POST and PATCH alike."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from gateway.api.models.routes import RouteCreate, RoutePatch
from gateway.app import create_app
from gateway.settings import Settings
from tests.api.helpers import assert_problem, register_service, route_body
from tests.conftest import SERVER_OPTIONS, make_settings
from tests.factories import Factory

DEFAULT_MAX = 86400


async def route_urls(client: TestClient, make: Factory) -> dict[str, tuple[str, dict[str, str]]]:
    """Where each kind of route is written, and by whom."""
    service, vendor = await register_service(client, make)
    space = await make.space()
    owner = await make.member(space, "owner")
    installation = await make.installation(service["id"], space, owner)
    return {"service": (f"/api/v1/services/{service['id']}/routes", vendor),
            "installation": (f"/api/v1/spaces/{space}/installations/{installation}/routes", make.auth(owner))}


@pytest.mark.parametrize("kind", ["service", "installation"])
async def test_a_ttl_above_the_bound_is_refused(client: TestClient, make: Factory, kind: str) -> None:
    url, headers = (await route_urls(client, make))[kind]
    too_long = await client.post(url, json=route_body(cache_enabled=True, cache_ttl=DEFAULT_MAX + 1),
                                 headers=headers)
    problem = await assert_problem(too_long, 422, "cache_ttl")
    assert "GATEWAY_CACHE_MAX_TTL" in orjson.dumps(problem).decode()

    created = await client.post(url, json=route_body(cache_enabled=True, cache_ttl=DEFAULT_MAX), headers=headers)
    assert created.status == 201, await created.text()
    route = await created.json()
    patched = await client.patch(f"{url}/{route['id']}", json={"cache_ttl": DEFAULT_MAX + 1}, headers=headers)
    await assert_problem(patched, 422, "cache_ttl")
    read = await client.get(f"{url}/{route['id']}", headers=headers)
    assert (await read.json())["cache_ttl"] == DEFAULT_MAX  # unchanged
    cleared = await client.patch(f"{url}/{route['id']}", json={"cache_enabled": False, "cache_ttl": None},
                                 headers=headers)
    assert cleared.status == 200, await cleared.text()


def test_the_models_take_the_bound_from_the_settings_they_are_validated_with() -> None:
    tight = Settings(cache_max_ttl=60)
    body = orjson.dumps(route_body(cache_enabled=True, cache_ttl=61))
    with pytest.raises(ValidationError) as refused:
        RouteCreate.model_validate_json(body, strict=True, context=tight)
    assert refused.value.errors()[0]["loc"] == ("cache_ttl",)
    assert "at most 60 seconds" in str(refused.value)
    with pytest.raises(ValidationError):
        RoutePatch.model_validate_json(b'{"cache_ttl": 61}', strict=True, context=tight)
    loose = Settings(cache_max_ttl=7 * DEFAULT_MAX)
    assert RouteCreate.model_validate_json(orjson.dumps(route_body(cache_ttl=2 * DEFAULT_MAX)), strict=True,
                                           context=loose).cache_ttl == 2 * DEFAULT_MAX
    with pytest.raises(ValidationError):  # no context: the setting's default
        RouteCreate.model_validate_json(orjson.dumps(route_body(cache_ttl=DEFAULT_MAX + 1)), strict=True)


async def test_the_api_honours_a_configured_bound(aiohttp_client: Any, database_url: str, make: Factory) -> None:
    client = await aiohttp_client(create_app(make_settings(database_url, cache_max_ttl=60)),
                                  server_kwargs=SERVER_OPTIONS)
    url, headers = (await route_urls(client, make))["service"]
    refused = await client.post(url, json=route_body(cache_enabled=True, cache_ttl=61), headers=headers)
    await assert_problem(refused, 422, "cache_ttl")


def test_the_openapi_document_names_the_setting() -> None:
    schema = RouteCreate.model_json_schema()["properties"]["cache_ttl"]
    assert "GATEWAY_CACHE_MAX_TTL" in schema["description"]
