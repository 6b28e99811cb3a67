"""Webhooks against real vendor endpoints: aiohttp servers on loopback started by the tests, a
real gateway app (its delivery worker included) on the module's database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from gateway.webhooks import COURIER
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory

API = "/api/v1"
ALL_EVENTS = ["installation.created", "installation.updated", "installation.deleted", "service.approved",
              "service.rejected", "service.deprecated", "assignment.created", "assignment.deleted"]
# Short enough for tests: retries after about 1 s, an answer's deadline of 1 s.
SCHEDULE = (1.0, 1.0, 1.0)
TIMEOUT = 1.0


@dataclass
class Received:
    name: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value


@dataclass
class Vendor:
    """A vendor's webhook endpoint. `plans[name]`: what `/name` answers, in turn (the last one
    stays): a status code, or "hang" (never answers)."""

    received: list[Received] = field(default_factory=list)
    plans: dict[str, list[int | str]] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def of(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.received.append(Received(name, request.headers, await request.read(), time.monotonic()))
        plan = self.plans.get(name, [])
        action = plan.pop(0) if len(plan) > 1 else (plan[0] if plan else 200)
        if action == "hang":
            await asyncio.sleep(3600)
        assert isinstance(action, int)
        return web.Response(status=action)

    async def wait_for(self, name: str, count: int, within: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.of(name)) < count:
            assert time.monotonic() < deadline, f"{name}: {len(self.of(name))} of {count} deliveries arrived"
            await asyncio.sleep(0.05)
        return self.of(name)


@pytest.fixture
async def vendor() -> AsyncIterator[Vendor]:
    endpoint = Vendor()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


async def until(check: Callable[[], Any], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await _value(check()):
        assert time.monotonic() < deadline, f"{what} not met within {within} s"
        await asyncio.sleep(0.05)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[TestClient]:
    """A gateway app whose delivery worker is listening."""
    settings = make_settings(database_url, webhook_retry_schedule=SCHEDULE, webhook_timeout=TIMEOUT)
    async with gateway_client(settings) as client:
        await until(lambda: client.app[COURIER].listening, what="the courier listening")
        yield client


async def webhook_service(client: TestClient, make: Factory, url: str, events: list[str], *,
                          approve: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """A service registered through the API by a fresh vendor (its maintainer's headers too),
    taking `events` at `url`, approved by a platform admin unless `approve` is false."""
    vendor = make.auth(await make.user())
    created = await client.post(f"{API}/services", headers=vendor, json={
        "name": "Hooks", "slug": f"hooks-{uuid.uuid4().hex[:8]}", "version": "1", "provider": "Acme",
        "api_base_url": "https://plugins.example.com/v1", "api_auth_type": "api_key",
        "api_auth_config": {"header_name": "X-Acme-Key"},
        "webhook_supported": True, "webhook_events": events, "capabilities": {"webhook_url": url}})
    assert created.status == 201, await created.text()
    service: dict[str, Any] = await created.json()
    if approve:
        changed = await client.put(f"{API}/services/{service['id']}/status", headers=await make.admin(),
                                   json={"status": "approved"})
        assert changed.status == 200, await changed.text()
        service = await changed.json()
    return service, vendor


async def space_owner(make: Factory) -> tuple[UUID, dict[str, str]]:
    space = await make.space()
    return space, make.auth(await make.member(space, "owner"))


async def stored(db: asyncpg.Pool, service_id: str | UUID) -> list[dict[str, Any]]:
    """The outbox rows of a service, oldest first (as the superuser: no row-level security)."""
    return [dict(r) for r in await db.fetch(
        "SELECT * FROM webhook_deliveries WHERE service_id = $1 ORDER BY occurred_at", UUID(str(service_id)))]
