"""Passive circuit breakers (contract revision 3, "Plugin health"), against real upstreams on
loopback that answer, fail, hang and come back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import metrics
from gateway.proxy.breaker import Breakers, BreakerOpen, Key, Outcome, Ticket, Unanswered, outcome_of
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status

FAILURES = 3
OPEN_SECONDS = 1.0


class Upstream:
    """`mode`: ok (200), fail (502), hang (never answers). Counts the calls that reached it."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            return web.json_response({"error": "down"}, status=502)
        await request.read()
        return web.json_response({"ok": True})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    yield up, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def breaker_client(database_url: str) -> AsyncIterator[TestClient]:
    settings = make_settings(database_url, breaker_failures=FAILURES, breaker_open_seconds=OPEN_SECONDS)
    async with gateway_client(settings) as client:
        yield client


async def plugin_for(db: asyncpg.Pool, make: Factory, url: str, client: TestClient, **options: Any) -> Plugin:
    plugin = await make_plugin(db, make, url, options={"timeout": 0.3, **options})
    await until_status(client, plugin.path("/x"), plugin.member, 200)
    return plugin


async def statuses(client: TestClient, plugin: Plugin, count: int) -> list[tuple[int, float, str | None]]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get(plugin.path("/x"), headers=plugin.member)
        await response.read()
        out.append((response.status, time.perf_counter() - started, response.headers.get("Retry-After")))
    return out


def open_breakers(service: str) -> float:
    return metrics.REGISTRY.get_sample_value("gateway_breaker_open", {"service": service}) or 0.0


async def test_a_hanging_upstream_gets_only_the_threshold_then_503_at_once(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client)
    up.mode, up.calls = "hang", 0
    results = await statuses(breaker_client, plugin, FAILURES + 5)
    assert [s for s, _, _ in results] == [504] * FAILURES + [503] * 5
    assert up.calls == FAILURES  # the open breaker never touched the upstream
    assert all(elapsed < 0.1 for _, elapsed, _ in results[FAILURES:])  # at once, no timeout waited
    assert all(retry is not None and int(retry) >= 1 for _, _, retry in results[FAILURES:])
    assert open_breakers(plugin.slug) == 1
    shown = await breaker_client.get(f"/api/v1/spaces/{plugin.space_id}/installations/{plugin.installation_id}",
                                     headers=plugin.owner)
    assert (await shown.json())["breaker_open"] is True


async def test_one_trial_after_the_open_time_and_its_success_closes(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client)
    up.mode = "fail"
    assert [s for s, _, _ in await statuses(breaker_client, plugin, FAILURES + 1)] == [502] * FAILURES + [503]
    await asyncio.sleep(OPEN_SECONDS + 0.1)
    # Still failing: the one trial fails and the breaker opens again at once.
    up.calls = 0
    assert [s for s, _, _ in await statuses(breaker_client, plugin, 3)] == [502, 503, 503]
    assert up.calls == 1
    await asyncio.sleep(OPEN_SECONDS + 0.1)
    up.mode = "ok"
    assert [s for s, _, _ in await statuses(breaker_client, plugin, 4)] == [200] * 4
    assert open_breakers(plugin.slug) == 0


async def test_only_consecutive_failures_open_it(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client)
    for _ in range(3):
        up.mode = "fail"
        assert {s for s, _, _ in await statuses(breaker_client, plugin, FAILURES - 1)} == {502}
        up.mode = "ok"
        assert [s for s, _, _ in await statuses(breaker_client, plugin, 1)] == [200]  # resets the count


async def test_what_the_caller_causes_never_opens_it(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client, max_body_bytes=10)
    for _ in range(FAILURES + 2):  # 413s: the caller's body
        response = await breaker_client.post(plugin.path("/x"), headers=plugin.member, data=b"x" * 100)
        assert response.status == 413
    for _ in range(FAILURES + 2):  # callers that give up before the answer
        up.mode = "hang"
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.05):
                await breaker_client.get(plugin.path("/x"), headers=plugin.member)
    up.mode = "ok"
    assert [s for s, _, _ in await statuses(breaker_client, plugin, 1)] == [200]


async def test_a_route_may_turn_its_breaker_off(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client, breaker=False)
    up.mode, up.calls = "fail", 0
    assert {s for s, _, _ in await statuses(breaker_client, plugin, FAILURES * 2)} == {502}
    assert up.calls == FAILURES * 2


async def test_another_installation_of_the_same_upstream_is_not_affected(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    up, url = upstream
    failing = await plugin_for(db, make, url, breaker_client)
    other = await plugin_for(db, make, url, breaker_client)
    up.mode = "fail"
    assert [s for s, _, _ in await statuses(breaker_client, failing, FAILURES + 1)][-1] == 503
    up.mode = "ok"
    assert [s for s, _, _ in await statuses(breaker_client, other, 2)] == [200, 200]  # another space's


def test_the_failure_table() -> None:
    assert outcome_of("timeout", None) is Outcome.FAILURE
    assert outcome_of("connect", None) is Outcome.FAILURE
    assert outcome_of("broken_stream", 200) is Outcome.FAILURE
    assert outcome_of(None, 503) is Outcome.FAILURE
    assert outcome_of(None, 500) is Outcome.SUCCESS  # the upstream answered: its own error
    assert outcome_of(None, 404) is Outcome.SUCCESS
    for caller_side in ("pool_timeout", "upstream_auth", None):
        assert outcome_of(caller_side, None) is Outcome.NEUTRAL


def admitted(breakers: Breakers, key: Key) -> Ticket:
    ticket = breakers.try_admit(key)
    assert ticket is not None
    return ticket


def test_a_trial_that_tells_nothing_lets_the_next_call_try() -> None:
    now = [0.0]
    breakers = Breakers(2, 5.0, clock=lambda: now[0])
    key = (uuid.uuid4(), "http://a:80")
    for _ in range(2):
        breakers.settle(admitted(breakers, key), "svc", Outcome.FAILURE)
    with pytest.raises(BreakerOpen):
        breakers.try_admit(key)
    now[0] = 6.0
    trial = admitted(breakers, key)
    assert trial.trial
    with pytest.raises(BreakerOpen):  # one trial at a time
        breakers.try_admit(key)
    breakers.settle(trial, "svc", Outcome.NEUTRAL)  # the caller went away
    trial = admitted(breakers, key)
    assert trial.trial  # the next call is the trial
    breakers.settle(trial, "svc", Outcome.SUCCESS)
    assert not breakers.is_open(key) and not admitted(breakers, key).trial


def test_held_breakers_are_bounded_and_a_healthy_verdict_closes_an_installations() -> None:
    breakers = Breakers(1, 30.0, max_breakers=10)
    installation = uuid.uuid4()
    keys = [(installation, f"http://h{i}:80") for i in range(3)]
    keys += [(uuid.uuid4(), f"http://x{i}:80") for i in range(20)]
    for key in keys:
        breakers.settle(admitted(breakers, key), "svc-bound", Outcome.FAILURE)
    assert sum(breakers.is_open(k) for k in keys) == 10  # the oldest dropped
    late = (installation, "http://late:80")
    breakers.settle(admitted(breakers, late), "svc-bound", Outcome.FAILURE)
    assert breakers.close_installation(installation) == 1 and not breakers.is_open(late)


def test_only_the_failures_still_to_come_may_be_in_flight_unvouched() -> None:
    breakers = Breakers(3, 30.0)
    key = (uuid.uuid4(), "http://a:80")
    first = [admitted(breakers, key) for _ in range(3)]
    assert breakers.try_admit(key) is None  # three calls started since the last answer
    breakers.answered(first[0])  # an answer vouches for every call in flight
    more = [admitted(breakers, key) for _ in range(3)]
    assert breakers.try_admit(key) is None
    breakers.settle(more[0], "svc", Outcome.FAILURE)  # one failure: two places left, both taken
    assert breakers.try_admit(key) is None
    breakers.settle(more[1], "svc", Outcome.NEUTRAL)  # a caller went away: its place comes back
    assert admitted(breakers, key)
    for ticket in [*first, more[2]]:
        breakers.settle(ticket, "svc", Outcome.SUCCESS)
    assert not breakers.is_open(key)


async def test_a_waiter_goes_on_an_answer_gets_503_when_it_opens_and_gives_up_after_its_wait() -> None:
    breakers = Breakers(2, 30.0)
    key = (uuid.uuid4(), "http://a:80")
    calls = [admitted(breakers, key) for _ in range(2)]
    waiting = asyncio.ensure_future(breakers.wait_admit(key, 5.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    breakers.answered(calls[0])
    ticket = await asyncio.wait_for(waiting, 1)  # the answer let it go
    for call in [*calls, ticket]:
        breakers.settle(call, "svc", Outcome.SUCCESS)

    calls = [admitted(breakers, key) for _ in range(2)]
    waiting = asyncio.ensure_future(breakers.wait_admit(key, 5.0))
    cancelled = asyncio.ensure_future(breakers.wait_admit(key, 5.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    for call in calls:
        breakers.settle(call, "svc", Outcome.FAILURE)
    with pytest.raises(BreakerOpen):  # opened while it waited: 503 at once
        await asyncio.wait_for(waiting, 1)

    other = (uuid.uuid4(), "http://b:80")
    calls = [admitted(breakers, other) for _ in range(2)]
    started = time.perf_counter()
    with pytest.raises(Unanswered):
        await breakers.wait_admit(other, 0.1)
    assert 0.09 < time.perf_counter() - started < 1
    for call in calls:
        breakers.settle(call, "svc", Outcome.NEUTRAL)
    assert not breakers._flights  # nothing held once nothing is in flight


async def test_overlapping_calls_to_a_hanging_upstream_reach_it_only_the_threshold(
        breaker_client: TestClient, upstream: tuple[Upstream, str], make: Factory, db: asyncpg.Pool) -> None:
    # A breaker learns of a failure only when its call times out: without the bound on calls in
    # flight, every call sent meanwhile would reach the upstream (bench/breaker.py: 109 of them).
    up, url = upstream
    plugin = await plugin_for(db, make, url, breaker_client)
    up.mode, up.calls = "hang", 0

    async def call() -> tuple[int, str | None]:
        response = await breaker_client.get(plugin.path("/x"), headers=plugin.member)
        await response.read()
        return response.status, response.headers.get("Retry-After")

    started = time.perf_counter()
    results = await asyncio.gather(*(call() for _ in range(30)))
    assert up.calls == FAILURES
    assert sorted(status for status, _ in results) == [503] * (30 - FAILURES) + [504] * FAILURES
    assert all(retry is not None for status, retry in results if status == 503)
    assert time.perf_counter() - started < 0.3 + 1.0  # one timeout, nothing queued behind it


async def test_many_overlapping_calls_to_a_healthy_upstream_all_pass(
        breaker_client: TestClient, make: Factory, db: asyncpg.Pool, aiohttp_server: Any) -> None:
    # Slow to finish but quick to answer: the head vouches, so streams never wait for each other.
    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.sleep(0.2)
        await response.write(b" last")
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", streaming)
    server = await aiohttp_server(app)
    plugin = await plugin_for(db, make, str(server.make_url("")).rstrip("/"), breaker_client)

    async def call() -> tuple[int, bytes]:
        response = await breaker_client.get(plugin.path("/x"), headers=plugin.member)
        return response.status, await response.read()

    started = time.perf_counter()
    results = await asyncio.gather(*(call() for _ in range(40)))
    assert results == [(200, b"first last")] * 40
    assert time.perf_counter() - started < 1.5  # not 40 / 3 rounds of 0.2 s (2.7 s)


async def test_route_option_breaker_is_validated(client: TestClient, make: Factory) -> None:
    admin = await make.admin()
    service = await (await client.post("/api/v1/services", headers=admin, json={
        "name": "B", "slug": f"b-{uuid.uuid4().hex[:8]}", "version": "1", "provider": "p"})).json()
    response = await client.post(f"/api/v1/services/{service['id']}/routes", headers=admin, json={
        "route_path": "/x", "method": "GET", "target_url": "https://vendor.example/x", "options": {"breaker": "no"}})
    assert response.status == 422 and "options.breaker" in await response.text()
    response = await client.post(f"/api/v1/services/{service['id']}/routes", headers=admin, json={
        "route_path": "/x", "method": "GET", "target_url": "https://vendor.example/x", "options": {"breaker": False}})
    assert response.status == 201, await response.text()
