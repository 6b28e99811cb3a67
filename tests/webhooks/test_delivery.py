"""Delivery (contract revision 3, "Webhooks"): signed anew per attempt and verifiable with the
JWKS by another JWT library than the gateway's (joserfc), retried on 500s and on an endpoint that
hangs after GATEWAY_WEBHOOK_RETRY_SCHEDULE, `failed` after the last attempt, a slow vendor never
delaying another, and a delivery claimed by a node killed mid-attempt completed by another."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from db.pool import create_pool
from tests.conftest import ASSERTION_KEY, gateway_client, make_settings
from tests.factories import Factory
from tests.webhooks.conftest import (
    API, SCHEDULE, TIMEOUT, Received, Vendor, space_owner, stored, until, webhook_service,
)
from gateway.proxy.assertion import AssertionSigner
from gateway.webhooks import COURIER, retry_delay


def verified(token: str, keys: KeySet, slug: str) -> dict[str, Any]:
    decoded = jose_jwt.decode(token, keys, algorithms=["ES256"])
    assert decoded.header["typ"] == "gateway-webhook+jwt" and decoded.header["kid"]
    jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": "plugin-gateway"},
                               aud={"essential": True, "value": slug},
                               exp={"essential": True}, iat={"essential": True}).validate(decoded.claims)
    claims: dict[str, Any] = decoded.claims
    return claims


def check_signature(received: Received, keys: KeySet, slug: str) -> dict[str, Any]:
    claims = verified(received.headers["X-Gateway-Signature"], keys, slug)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["delivery_id"] == received.headers["X-Gateway-Delivery"] == received.json["id"]
    assert claims["event"] == received.headers["X-Gateway-Event"] == received.json["event"]
    assert claims["body_sha256"] == hashlib.sha256(received.body).hexdigest()
    return claims


async def deliveries(client: TestClient, service_id: str, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    listed = await client.get(f"{API}/services/{service_id}/webhook-deliveries", headers=headers, params=query)
    assert listed.status == 200, await listed.text()
    items: list[dict[str, Any]] = (await listed.json())["items"]
    return items


async def test_signed_per_attempt_retried_on_500_until_delivered(gateway: TestClient, make: Factory,
                                                                 vendor: Vendor) -> None:
    """Schedule 1,1,1: an endpoint answering 500 twice, then 200, gets it on the third attempt,
    and the delivery list says `delivered`."""
    client = gateway
    vendor.plans["flaky"] = [500, 500, 200]
    service, maintainer = await webhook_service(client, make, vendor.url("flaky"),
                                                ["installation.created", "installation.deleted"])
    space, owner = await space_owner(make)
    assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                              json={"slug": service["slug"]})).status == 201
    attempts = await vendor.wait_for("flaky", 3)
    keys = KeySet.import_key_set(await (await client.get("/.well-known/jwks.json")).json())
    claims = [check_signature(r, keys, service["slug"]) for r in attempts]
    assert len({r.headers["X-Gateway-Signature"] for r in attempts}) == 3  # signed anew each time
    assert len({r.body for r in attempts}) == 1 and len({c["delivery_id"] for c in claims}) == 1
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:])]
    assert all(0.9 <= gap <= 3.5 for gap in gaps), gaps  # 1 s (+ up to 10 %), woken on time

    async def delivered() -> bool:
        return (await deliveries(client, service["id"], maintainer))[0]["status"] == "delivered"
    await until(delivered, what="delivered")
    [item] = await deliveries(client, service["id"], maintainer)
    assert item["attempts"] == 3 and item["last_status_code"] == 200 and item["last_error"] is None
    assert item["next_attempt_at"] is None and item["delivered_at"] and item["event"] == "installation.created"
    assert item["installation_id"] and item["space_id"] == str(space)
    await asyncio.sleep(1.5)
    assert len(vendor.of("flaky")) == 3


async def test_a_hung_endpoint_is_retried_then_failed_after_the_last_attempt(
        gateway: TestClient, make: Factory, vendor: Vendor) -> None:
    client = gateway
    vendor.plans["hung"] = ["hang", 200]
    vendor.plans["dead"] = [503]
    hung, maintainer = await webhook_service(client, make, vendor.url("hung"), ["installation.created"])
    dead, dead_maintainer = await webhook_service(client, make, vendor.url("dead"), ["installation.created"])
    space, owner = await space_owner(make)
    for service in (hung, dead):
        assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                                  json={"slug": service["slug"]})).status == 201
    first, second = await vendor.wait_for("hung", 2)
    assert second.at - first.at >= TIMEOUT + SCHEDULE[0] - 0.1  # no answer within 1 s, then 1 s later

    async def status_of(service_id: str, headers: dict[str, str]) -> str:
        return str((await deliveries(client, service_id, headers))[0]["status"])
    await until(lambda: _is(status_of(hung["id"], maintainer), "delivered"), what="hung delivered")
    [item] = await deliveries(client, hung["id"], maintainer)
    assert item["attempts"] == 2 and item["last_status_code"] == 200

    await until(lambda: _is(status_of(dead["id"], dead_maintainer), "failed"), what="dead failed")
    [failed] = await deliveries(client, dead["id"], dead_maintainer, status="failed")
    assert failed["attempts"] == len(SCHEDULE) + 1 and failed["last_status_code"] == 503
    assert failed["last_error"] == "answered 503" and failed["next_attempt_at"] is None
    assert len(vendor.of("dead")) == len(SCHEDULE) + 1
    assert await deliveries(client, dead["id"], dead_maintainer, status="pending") == []


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_a_slow_vendor_never_delays_another(gateway: TestClient, make: Factory, vendor: Vendor) -> None:
    """Deliveries to a host that hangs fill only that host's slots (4 per process): another host's
    arrive at once."""
    client = gateway
    other = Vendor()
    await other.start()
    try:
        vendor.plans["slow"] = ["hang"]
        slow, _ = await webhook_service(client, make, vendor.url("slow"), ["installation.created"])
        fast, _ = await webhook_service(client, make, other.url("fast"), ["installation.created"])
        for _ in range(8):  # twice the per-host bound, all due at once
            space, owner = await space_owner(make)
            assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                                      json={"slug": slow["slug"]})).status == 201
        await vendor.wait_for("slow", 4)
        started = time.monotonic()
        space, owner = await space_owner(make)
        assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                                  json={"slug": fast["slug"]})).status == 201
        await other.wait_for("fast", 1, within=0.8)
        assert time.monotonic() - started < 0.8
        assert len(vendor.of("slow")) <= 4  # never more than the per-host bound in flight
    finally:
        await other.stop()


async def test_a_delivery_of_a_killed_node_is_completed_by_another(database_url: str, make: Factory,
                                                                   db: asyncpg.Pool, vendor: Vendor) -> None:
    """A node claims a delivery (its lease set) and dies before recording anything: once the lease
    has passed another node's courier takes it and delivers it; the dead claim's late result is
    refused."""
    settings = make_settings(database_url, webhook_retry_schedule=SCHEDULE, webhook_timeout=TIMEOUT)
    async with gateway_client(settings) as client:  # to register, then stopped: no courier runs
        service, maintainer = await webhook_service(client, make, vendor.url("orphan"), ["installation.created"])
    # Earlier tests' deliveries still pending (to their stopped endpoints) out of the way: the
    # claim below must find this test's one only.
    await db.execute("UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, lease_id = NULL "
                     "WHERE status = 'pending'")
    space = await make.space()
    await db.execute("INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2)",
                     UUID(service["id"]), space)
    # The node that dies: the gateway's role, through the workers' own function, a 1 s lease.
    killed = await create_pool(database_url, min_size=1, max_size=1, role="gateway_app")
    try:
        [claim] = await killed.fetch("SELECT * FROM gateway_webhook_claim(10, 4, '{}', '{}', 1.0)")
        assert claim["attempts"] == 1 and claim["event"] == "installation.created"
        assert await killed.fetch("SELECT * FROM gateway_webhook_claim(10, 4, '{}', '{}', 1.0)") == []  # leased
        async with gateway_client(settings) as client:
            await until(lambda: client.app[COURIER].listening, what="the courier listening")
            [received] = await vendor.wait_for("orphan", 1, within=10)
            assert received.json["id"] == str(claim["id"])
            await until(lambda: _delivered(db, service["id"]), what="delivered by the second node")
            [item] = await deliveries(client, service["id"], maintainer)
            assert item["attempts"] == 2 and item["status"] == "delivered"
        # The dead node's result, should it ever come: not recorded (its lease is gone).
        assert await killed.fetchval("SELECT gateway_webhook_record($1, $2, 'failed', 500, 'late', NULL)",
                                     claim["id"], claim["lease"]) is False
    finally:
        await killed.close()
    assert [r["status"] for r in await stored(db, service["id"])] == ["delivered"]


async def _delivered(db: asyncpg.Pool, service_id: str) -> bool:
    return [r["status"] for r in await stored(db, service_id)] == ["delivered"]


async def test_redeliver_queues_the_same_delivery_again(gateway: TestClient, make: Factory, vendor: Vendor) -> None:
    client = gateway
    service, maintainer = await webhook_service(client, make, vendor.url("again"), ["service.deprecated"])
    assert (await client.put(f"{API}/services/{service['id']}/status", headers=await make.admin(),
                             json={"status": "deprecated"})).status == 200
    [first] = await vendor.wait_for("again", 1)
    await until(lambda: _is(_first_status(client, service["id"], maintainer), "delivered"), what="delivered")
    delivery = first.json["id"]
    queued = await client.post(f"{API}/services/{service['id']}/webhook-deliveries/{delivery}/redeliver",
                               headers=maintainer)
    assert queued.status == 202, await queued.text()
    body = await queued.json()
    assert body["id"] == delivery and body["status"] == "pending" and body["attempts"] == 0
    _, second = await vendor.wait_for("again", 2)
    assert second.json["id"] == delivery and second.body == first.body  # the receiver deduplicates by id
    assert second.headers["X-Gateway-Signature"] != first.headers["X-Gateway-Signature"]
    missing = await client.post(f"{API}/services/{service['id']}/webhook-deliveries/{UUID(int=1)}/redeliver",
                                headers=maintainer)
    assert missing.status == 404


async def _first_status(client: TestClient, service_id: str, headers: dict[str, str]) -> str:
    return str((await deliveries(client, service_id, headers))[0]["status"])


def test_the_retry_schedule_with_jitter() -> None:
    schedule = (60.0, 300.0)
    assert retry_delay(schedule, 1, rand=lambda: 0.0) == 60.0
    assert retry_delay(schedule, 1, rand=lambda: 1.0) == 66.0  # at most 10 % later
    assert retry_delay(schedule, 2, rand=lambda: 0.5) == 315.0
    assert retry_delay(schedule, 3) is None  # the last attempt has been made: failed


def test_the_assertion_says_what_it_is() -> None:
    """The assertion's JWS header carries its own `typ`: neither token passes for the other."""
    signer = AssertionSigner.from_pem(ASSERTION_KEY, "plugin-gateway")
    token = signer.assertion(subject="u", audience="slug", space_id="s", installation_id="i", role="member")
    decoded = jose_jwt.decode(token, KeySet.import_key_set(signer.jwks()), algorithms=["ES256"])
    assert decoded.header["typ"] == "gateway-assertion+jwt" and decoded.header["kid"] == signer.kid
