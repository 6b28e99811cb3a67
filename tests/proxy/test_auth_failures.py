"""GATEWAY_AUTH_FAILURES_PER_MINUTE: past that many failed credentials of one client address in a
minute, its further failing requests answer 429 with Retry-After (proxy and API alike); requests
that authenticate, requests without credentials and other addresses are not affected."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth_failures import WINDOW_SECONDS, AuthFailures
from gateway.proxy.runtime import PROXY
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status

LIMIT = 3


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[TestClient]:
    # Behind a trusted proxy (the test client's loopback), X-Forwarded-For names the client.
    settings = make_settings(database_url, auth_failures_per_minute=LIMIT,
                             trusted_proxies=(ip_network("127.0.0.0/8"),))
    async with gateway_client(settings) as client:
        yield client


@pytest.fixture
async def plugin(db: asyncpg.Pool, make: Factory, upstream: str, gateway: TestClient) -> Plugin:
    plugin = await make_plugin(db, make, upstream)
    await until_status(gateway, plugin.path("/hello"), plugin.member, 200)
    return plugin


def bad_key() -> dict[str, str]:
    return {"X-API-Key": f"pgw_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"}


def bad_jwt() -> dict[str, str]:
    return {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bm90LXNpZ25lZA"}


def at(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Forwarded-For": address, **(headers or {})}


async def status(client: TestClient, path: Any, headers: dict[str, str]) -> int:
    response = await client.get(path, headers=headers)
    await response.read()
    return response.status


async def test_past_the_limit_failing_requests_of_that_address_answer_429(
        gateway: TestClient, plugin: Plugin, make: Factory) -> None:
    attacker, neighbour = "203.0.113.7", "203.0.113.8"
    foreign = make.auth(await make.member(await make.space(), "owner"))
    for _ in range(LIMIT):
        assert await status(gateway, plugin.path("/hello"), at(attacker, bad_key())) == 401

    response = await gateway.get(plugin.path("/hello"), headers=at(attacker, bad_key()))
    assert response.status == 429
    assert response.headers["Content-Type"] == "application/problem+json"
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW_SECONDS
    assert (await response.json())["status"] == 429
    # Any failing credential, on the proxy or the API.
    assert await status(gateway, plugin.path("/hello"), at(attacker, bad_jwt())) == 429
    assert await status(gateway, f"/api/v1/spaces/{plugin.space_id}/installations", at(attacker, bad_key())) == 429

    # Requests that authenticate are served as usual; a caller from another space is refused as usual.
    assert await status(gateway, plugin.path("/hello"), at(attacker, plugin.member)) == 200
    assert await status(gateway, f"/api/v1/spaces/{plugin.space_id}/installations", at(attacker, plugin.owner)) == 200
    assert await status(gateway, plugin.path("/hello"), at(attacker, foreign)) == 403
    # Without credentials: the usual 401.
    assert await status(gateway, plugin.path("/hello"), at(attacker)) == 401
    # Another address is not affected.
    assert await status(gateway, plugin.path("/hello"), at(neighbour, bad_key())) == 401
    assert await status(gateway, plugin.path("/hello"), at(neighbour, plugin.member)) == 200


async def test_requests_without_credentials_are_not_counted(gateway: TestClient, plugin: Plugin) -> None:
    address = "198.51.100.20"
    for _ in range(4 * LIMIT):
        assert await status(gateway, plugin.path("/hello"), at(address)) == 401
        assert await status(gateway, f"/api/v1/spaces/{plugin.space_id}/installations", at(address)) == 401
    for _ in range(LIMIT):
        assert await status(gateway, plugin.path("/hello"), at(address, bad_key())) == 401
    assert await status(gateway, plugin.path("/hello"), at(address, bad_key())) == 429


async def test_failures_on_the_api_and_the_proxy_count_together(gateway: TestClient, plugin: Plugin) -> None:
    address = "198.51.100.30"
    api = f"/api/v1/spaces/{plugin.space_id}/installations"
    assert await status(gateway, api, at(address, bad_jwt())) == 401
    assert await status(gateway, plugin.path("/hello"), at(address, bad_key())) == 401
    assert await status(gateway, api, at(address, bad_key())) == 401
    assert await status(gateway, api, at(address, bad_key())) == 429
    assert await status(gateway, plugin.path("/hello"), at(address, bad_key())) == 429


async def test_an_untrusted_peer_cannot_pick_its_address(database_url: str, plugin: Plugin) -> None:
    """Without GATEWAY_TRUSTED_PROXIES the peer is the client: X-Forwarded-For changes nothing."""
    async with gateway_client(make_settings(database_url, auth_failures_per_minute=LIMIT)) as client:
        for n in range(LIMIT):
            assert await status(client, plugin.path("/hello"), at(f"192.0.2.{n}", bad_key())) == 401
        assert await status(client, plugin.path("/hello"), at("192.0.2.99", bad_key())) == 429
        assert client.app[PROXY].callers.failures.limit == LIMIT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides_and_the_refused_count_too() -> None:
    clock = Clock()
    failures = AuthFailures(3, clock=clock)
    for offset in (0, 10, 20):
        clock.now = 1000 + offset
        assert failures.failed("a") is None
    clock.now = 1030
    assert failures.failed("a") == 40  # the failure at +10 leaves the window at +70
    assert failures.failed("b") is None  # another address
    clock.now = 1069
    assert failures.failed("a") == 11  # +20 leaves at +80: the refused ones count too
    clock.now = 1100.5
    assert failures.failed("a") is None  # only +30 and +69 within the minute: under the limit


def test_memory_stays_bounded_under_rotating_addresses() -> None:
    failures = AuthFailures(60, memory_bytes=64 * 1024)
    for n in range(100_000):
        failures.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert 0 < len(failures) < 1000
    for _ in range(60):  # an address that keeps failing still fits
        failures.failed("203.0.113.1")
    assert failures.failed("203.0.113.1") is not None
