"""Registration-time lookups: only after the caller's rights are checked, never inside a database
transaction, and a name that does not resolve in time is accepted (checked again at request time).

A loopback DNS server answers the names; the shared lookups of the test's event loop (the ones
the app uses) are pointed at it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import API, assert_problem, route_body, service_body
from tests.conftest import gateway_client, make_settings
from tests.dns import DnsServer, Zone, shared_dns
from tests.factories import Factory

SLOW = 1.5  # seconds before the DNS server answers a slow name


@pytest.fixture
def zone() -> Zone:
    zone = Zone()
    zone.add("plugins.example.com", "93.184.216.34")
    zone.add("public.test", "93.184.216.34")
    zone.add("private.test", "10.0.0.1")
    zone.add("metadata.test", "64:ff9b::a9fe:a9fe")  # NAT64 of 169.254.169.254
    for name in ("slow.test", "slow-private.test"):
        zone.add(name, "93.184.216.34" if name == "slow.test" else "10.0.0.1", delay=SLOW)
    return zone


@pytest.fixture
async def dns(zone: Zone) -> AsyncIterator[DnsServer]:
    async with shared_dns(zone, timeout=2 * SLOW) as (server, _):
        yield server


@pytest.fixture
async def strict(database_url: str, dns: DnsServer) -> AsyncIterator[TestClient]:
    async with gateway_client(make_settings(database_url, allow_private_upstreams=False)) as client:
        yield client


async def approved_service(client: TestClient, make: Factory, **overrides: Any) -> tuple[str, dict[str, str]]:
    vendor = make.auth(await make.user())
    created = await client.post(f"{API}/services", json=service_body(**overrides), headers=vendor)
    assert created.status == 201, await created.text()
    service_id = (await created.json())["id"]
    approved = await client.put(f"{API}/services/{service_id}/status", json={"status": "approved"},
                                headers=await make.admin())
    assert approved.status == 200
    return service_id, vendor


def asked(dns: DnsServer, name: str) -> bool:
    return name in dns.questions


async def test_strangers_are_refused_before_any_lookup(strict: TestClient, dns: DnsServer, make: Factory) -> None:
    service_id, vendor = await approved_service(strict, make)
    route = await strict.post(f"{API}/services/{service_id}/routes", json=route_body(), headers=vendor)
    assert route.status == 201, await route.text()
    route_id = (await route.json())["id"]
    pending = (await (await strict.post(f"{API}/services", json=service_body(), headers=vendor)).json())["id"]
    stranger = make.auth(await make.user())

    started = time.monotonic()
    slow_route = route_body(target_url="https://slow.test/{id}", auth_config={"token_url": "https://slow.test/t"})
    await assert_problem(await strict.post(f"{API}/services/{service_id}/routes", json=slow_route,
                                           headers=stranger), 403)
    await assert_problem(await strict.patch(f"{API}/services/{service_id}/routes/{route_id}",
                                            json={"target_url": "https://slow.test/{id}"}, headers=stranger), 403)
    await assert_problem(await strict.patch(f"{API}/services/{service_id}", headers=stranger,
                                            json={"api_base_url": "https://slow.test/v1"}), 403)
    await assert_problem(await strict.patch(f"{API}/services/{service_id}", headers=stranger,
                                            json={"api_auth_config": {"token_url": "https://slow.test/t"}}), 403)
    # A pending service is not even known to strangers.
    await assert_problem(await strict.post(f"{API}/services/{pending}/routes", json=slow_route,
                                           headers=stranger), 404)
    await assert_problem(await strict.post(f"{API}/services", json=service_body(api_base_url="https://slow.test/"),
                                           headers={}), 401)
    assert time.monotonic() - started < SLOW
    assert not asked(dns, "slow.test")


async def test_maintainers_urls_are_resolved_and_judged(strict: TestClient, dns: DnsServer, make: Factory) -> None:
    service_id, vendor = await approved_service(strict, make)
    routes = f"{API}/services/{service_id}/routes"
    for change, field in (({"target_url": "https://private.test/{id}"}, "target_url"),
                          ({"target_url": "http://metadata.test/latest/{id}"}, "target_url"),
                          ({"target_url": "https://public.test/{id}",
                            "auth_config": {"token_url": "https://private.test/token"}}, "auth_config.token_url")):
        await assert_problem(await strict.post(routes, json=route_body(**change), headers=vendor), 422, field)
    for change, field in (({"api_base_url": "https://private.test/v1"}, "api_base_url"),
                          ({"api_auth_config": {"token_url": "http://metadata.test/t"}}, "api_auth_config.token_url")):
        await assert_problem(await strict.patch(f"{API}/services/{service_id}", json=change, headers=vendor), 422, field)
    await assert_problem(await strict.post(f"{API}/services", headers=vendor,
                                           json=service_body(api_base_url="https://private.test/")), 422, "api_base_url")
    assert asked(dns, "private.test") and asked(dns, "metadata.test")

    created = await strict.post(routes, json=route_body(target_url="https://public.test/{id}"), headers=vendor)
    assert created.status == 201, await created.text()
    # A name that resolves to a private address only after the deadline is accepted here; the
    # proxy checks it again at every connect.
    slow = await strict.post(routes, json=route_body(route_path="/s/{id}", target_url="https://unknown.test/{id}"),
                             headers=vendor)
    assert slow.status == 201, await slow.text()


async def test_a_slow_name_is_accepted_when_it_misses_the_deadline(database_url: str, zone: Zone,
                                                                  make: Factory) -> None:
    async with shared_dns(zone, timeout=0.3) as (dns, _), \
            gateway_client(make_settings(database_url, allow_private_upstreams=False)) as client:
        service_id, vendor = await approved_service(client, make)
        started = time.monotonic()
        created = await client.post(f"{API}/services/{service_id}/routes", headers=vendor,
                                    json=route_body(target_url="https://slow-private.test/{id}"))
        assert created.status == 201, await created.text()
        assert time.monotonic() - started < SLOW
        assert asked(dns, "slow-private.test")


async def test_no_lookup_while_the_service_row_is_locked(strict: TestClient, dns: DnsServer, make: Factory) -> None:
    """The slow lookup of one PATCH holds no transaction: another change to the same service (which
    locks its row) goes through meanwhile instead of waiting for the lookup."""
    service_id, vendor = await approved_service(strict, make)
    item = f"{API}/services/{service_id}"

    async def slow_patch() -> float:
        response = await strict.patch(item, json={"api_base_url": "https://slow.test/v2"}, headers=vendor)
        assert response.status == 200, await response.text()
        return time.monotonic()

    async def quick_patch() -> float:
        await asyncio.sleep(0.2)  # the slow PATCH is in its lookup by now
        started = time.monotonic()
        response = await strict.patch(item, json={"description": "changed meanwhile"}, headers=vendor)
        assert response.status == 200, await response.text()
        assert time.monotonic() - started < SLOW / 2
        return time.monotonic()

    slow_done, quick_done = await asyncio.gather(slow_patch(), quick_patch())
    assert quick_done < slow_done
    final = await (await strict.get(item, headers=vendor)).json()
    assert final["api_base_url"] == "https://slow.test/v2" and final["description"] == "changed meanwhile"
