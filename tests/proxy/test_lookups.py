"""Name lookups for upstreams: c-ares on the event loop (never the default thread pool), a bound on
how many are in flight, a deadline for each, and the proxy's connector using the same ones."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.proxy.resolver import PublicOnlyResolver, UpstreamRefused
from gateway.upstream_safety import (
    MAX_LOOKUPS_IN_FLIGHT, LookupFailed, Lookups, UnsafeUpstream, check_registration_url, shared_lookups,
)
from tests.conftest import gateway_client, make_settings
from tests.dns import Zone, dns_server, shared_dns
from tests.factories import Factory
from tests.plugins import make_plugin, until_status


@pytest.fixture
def no_thread_pool_lookups(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every getaddrinfo call that would take a thread: the tests assert there are none."""
    calls: list[Any] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return calls


async def test_lookups_in_flight_are_bounded(no_thread_pool_lookups: list[Any]) -> None:
    zone = Zone()
    names = [zone.add(f"n{i}.slow.test", "93.184.216.34", delay=0.3) for i in range(12)]
    async with dns_server(zone) as server:
        lookups = Lookups(nameservers=[server.nameserver], timeout=5.0, max_in_flight=4)
        started = time.monotonic()
        answers = await asyncio.gather(*(lookups.resolve(name, 443) for name in names))
        elapsed = time.monotonic() - started
        await lookups.close()
    assert all(a[0].host == "93.184.216.34" and a[0].port == 443 for a in answers)
    assert lookups.started == 12 and lookups.peak_in_flight == 4 and lookups.in_flight == 0
    assert server.peak_pending <= 4 * 2  # an A and an AAAA question per lookup
    assert elapsed >= 3 * 0.3  # 12 lookups, 4 at a time
    assert no_thread_pool_lookups == []


async def test_a_slow_name_does_not_resolve_and_frees_its_slot() -> None:
    zone = Zone()
    zone.add("slow.test", "93.184.216.34", delay=5.0)
    zone.add("fast.test", "93.184.216.34")
    async with dns_server(zone) as server:
        lookups = Lookups(nameservers=[server.nameserver], timeout=0.3, max_in_flight=2)
        started = time.monotonic()
        for outcome in await asyncio.gather(lookups.resolve("slow.test"), lookups.resolve("slow.test"),
                                            return_exceptions=True):
            assert isinstance(outcome, LookupFailed)
        assert time.monotonic() - started < 1.5
        # c-ares gives up at the same deadline, so the slots come back and the next name resolves.
        assert (await lookups.resolve("fast.test"))[0].host == "93.184.216.34"
        assert lookups.in_flight == 0
        with pytest.raises(LookupFailed):
            await lookups.resolve("unknown.test")  # NXDOMAIN
        await lookups.close()


async def test_registration_check_resolves_through_the_shared_lookups(no_thread_pool_lookups: list[Any]) -> None:
    zone = Zone()
    zone.add("private.test", "93.184.216.34", "10.0.0.1")
    zone.add("public.test", "93.184.216.34", "2606:4700:4700::1111")
    zone.add("nat64.test", "64:ff9b::a9fe:a9fe")
    zone.add("slow.test", "10.0.0.1", delay=5.0)
    async with shared_dns(zone, timeout=0.3) as (server, lookups):
        for url in ("https://private.test/x", "http://nat64.test:8080/"):
            with pytest.raises(UnsafeUpstream):
                await check_registration_url(url, allow_private=False)
        await check_registration_url("https://public.test/x", allow_private=False)
        started = time.monotonic()
        await check_registration_url("https://slow.test/x", allow_private=False)  # accepted: no answer in time
        await check_registration_url("https://unknown.test/x", allow_private=False)  # accepted: NXDOMAIN
        assert time.monotonic() - started < 1.5
        assert {"private.test", "public.test", "nat64.test", "slow.test"} <= set(server.questions)
    assert no_thread_pool_lookups == []


async def test_one_shared_lookups_per_loop() -> None:
    assert shared_lookups() is shared_lookups()
    assert shared_lookups().max_in_flight == MAX_LOOKUPS_IN_FLIGHT
    other: list[Lookups] = []

    def in_another_loop() -> None:
        async def grab() -> None:
            other.append(shared_lookups())
        asyncio.run(grab())

    await asyncio.to_thread(in_another_loop)
    assert other[0] is not shared_lookups()


async def test_public_only_resolver_keeps_only_public_answers() -> None:
    zone = Zone()
    zone.add("mixed.test", "10.0.0.1", "93.184.216.34", "::ffff:127.0.0.1", "2606:4700:4700::1111")
    zone.add("private.test", "169.254.169.254", "64:ff9b::7f00:1")
    async with dns_server(zone) as server:
        lookups = Lookups(nameservers=[server.nameserver])
        resolver = PublicOnlyResolver(lookups)
        found = await resolver.resolve("mixed.test", 8443, socket.AF_UNSPEC)
        assert sorted(r["host"] for r in found) == ["2606:4700:4700::1111", "93.184.216.34"]
        assert {r["port"] for r in found} == {8443}
        with pytest.raises(UpstreamRefused):
            await resolver.resolve("private.test", 80, socket.AF_UNSPEC)
        with pytest.raises(OSError):
            await resolver.resolve("unknown.test", 80)
        await resolver.close()
        assert (await lookups.resolve("mixed.test"))  # closing the resolver leaves the lookups usable
        await lookups.close()


async def test_allowing_private_upstreams_keeps_every_answer_from_the_same_bounded_lookups() -> None:
    zone = Zone()
    zone.add("private.test", "10.0.0.1", "93.184.216.34")
    async with dns_server(zone) as server:
        lookups = Lookups(nameservers=[server.nameserver])
        resolver = PublicOnlyResolver(lookups, allow_private=True)
        found = await resolver.resolve("private.test", 80, socket.AF_UNSPEC)
        assert sorted(r["host"] for r in found) == ["10.0.0.1", "93.184.216.34"]
        with pytest.raises(OSError):
            await resolver.resolve("unknown.test", 80)
        await lookups.close()


async def test_proxy_connects_only_after_the_shared_lookup(database_url: str, make: Factory, db: asyncpg.Pool,
                                                           aiohttp_server: Any,
                                                           no_thread_pool_lookups: list[Any]) -> None:
    reached: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(text="internal")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server: TestServer = await aiohttp_server(app)
    zone = Zone()
    zone.add("internal.test", "127.0.0.1")
    zone.add("nat64-internal.test", "64:ff9b::7f00:1")
    async with shared_dns(zone) as (dns, lookups), \
            gateway_client(make_settings(database_url, allow_private_upstreams=False)) as client:
        for name in ("internal.test", "nat64-internal.test"):
            plugin = await make_plugin(db, make, f"http://{name}:{server.port}")
            response = await until_status(client, plugin.path("/secrets"), plugin.member, 502)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert name in dns.questions
    assert reached == []
    assert lookups.started >= 2
    assert not [h for h in no_thread_pool_lookups if str(h).endswith(".test")]
