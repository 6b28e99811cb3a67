"""The outbox (contract revision 3, "Webhooks"): an event per change kind, written by the change's
own transaction, so exactly once per committed change and never for a rolled-back one; bookkeeping
sends nothing; `data` is the row as the API shows it, never credentials."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db.encryption import KeyRing
from db.rotate import rotate
from tests.api.helpers import instance_service_body, new_instance
from tests.conftest import ENCRYPTION_KEYS
from tests.factories import Factory
from tests.webhooks.conftest import ALL_EVENTS, API, Vendor, space_owner, stored, webhook_service

SECRET = "vendor-key-" + uuid.uuid4().hex


async def test_every_change_kind_sends_its_event_exactly_once(gateway: TestClient, make: Factory,
                                                              db: asyncpg.Pool, vendor: Vendor) -> None:
    client = gateway
    admin = await make.admin()
    service, _ = await webhook_service(client, make, vendor.url("all"), ALL_EVENTS)  # → service.approved
    space, owner = await space_owner(make)

    installed = await client.post(f"{API}/spaces/{space}/installations", headers=owner, json={
        "slug": service["slug"], "config": {"region": "eu"}, "credentials": {"api_key": SECRET}})
    assert installed.status == 201, await installed.text()
    installation = await installed.json()
    one = f"{API}/spaces/{space}/installations/{installation['id']}"
    assert (await client.patch(one, headers=owner, json={"config": {"region": "us"}})).status == 200

    # Bookkeeping: a health verdict, the count, a re-seal under another key: no event.
    await db.execute("SELECT gateway_record_health($1::uuid[], $2::text[], now())",
                     [UUID(installation["id"])], ["healthy"])
    await db.execute("UPDATE service_registry SET installation_count = installation_count WHERE id = $1",
                     UUID(service["id"]))
    first, second = ENCRYPTION_KEYS.split(",")
    async with db.acquire() as conn:
        resealed = await rotate(conn, KeyRing.parse(f"{second},{first}"))
    assert sum(r.rotated for r in resealed) >= 1

    instance = await new_instance(client, space, owner)
    services = f"{API}/spaces/{space}/instances/{instance['id']}/services"
    managed = []
    for name in ("nginx", "redis"):
        created = await client.post(services, headers=owner, json=instance_service_body(name=name))
        assert created.status == 201, await created.text()
        managed.append((await created.json())["id"])
    for target in managed:
        assigned = await client.post(f"{API}/spaces/{space}/instance-services/{target}/assignments",
                                     headers=owner, json={"plugin_id": service["id"], "credentials": {"token": SECRET}})
        assert assigned.status == 201, await assigned.text()
    removed = await client.delete(f"{API}/spaces/{space}/instance-services/{managed[0]}/assignments/{service['id']}",
                                  headers=owner)
    assert removed.status == 204
    # Deleting an instance service takes its assignment along: that is an assignment.deleted too.
    assert (await client.delete(f"{services}/{managed[1]}", headers=owner)).status == 204

    assert (await client.delete(one, headers=owner)).status == 204
    reinstalled = await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                                    json={"slug": service["slug"]})
    assert reinstalled.status == 201
    deprecated = await client.put(f"{API}/services/{service['id']}/status", headers=admin,
                                  json={"status": "deprecated", "reason": "v2 is out"})
    assert deprecated.status == 200

    rejected, _ = await webhook_service(client, make, vendor.url("rejected"), ALL_EVENTS, approve=False)
    assert (await client.put(f"{API}/services/{rejected['id']}/status", headers=admin,
                             json={"status": "rejected"})).status == 200

    expected = Counter({"service.approved": 1, "installation.created": 2, "installation.updated": 1,
                        "assignment.created": 2, "assignment.deleted": 2, "installation.deleted": 1,
                        "service.deprecated": 1})
    received = await vendor.wait_for("all", sum(expected.values()))
    assert (await vendor.wait_for("rejected", 1))[0].json["event"] == "service.rejected"
    await asyncio.sleep(1.5)  # nothing more comes
    received = vendor.of("all")
    assert Counter(r.json["event"] for r in received) == expected
    assert len({r.json["id"] for r in received}) == len(received)  # each delivered once
    rows = await stored(db, service["id"])
    assert Counter(r["event"] for r in rows) == expected and {r["status"] for r in rows} == {"delivered"}

    for r in received:
        body = r.json
        assert SECRET.encode() not in r.body and b'"credentials"' not in r.body and b"nonce" not in r.body
        assert r.headers["X-Gateway-Event"] == body["event"] and r.headers["X-Gateway-Delivery"] == body["id"]
        assert r.headers["Content-Type"] == "application/json"
        assert set(body) == {"id", "event", "occurred_at", "service_id", "space_id", "installation_id", "data"}
        assert body["service_id"] == service["id"]
        if body["event"].startswith("service."):
            assert body["space_id"] is None and body["installation_id"] is None
            assert body["data"]["id"] == service["id"] and body["data"]["slug"] == service["slug"]
        else:
            assert body["space_id"] == str(space) and body["installation_id"] == installation["id"]
    by_event = {r.json["event"]: r.json for r in reversed(sorted(received, key=lambda r: r.json["occurred_at"]))}
    created = by_event["installation.created"]["data"]
    assert created["credential_keys"] == ["api_key"] and created["service_slug"] == service["slug"]
    assert by_event["installation.updated"]["data"]["config"] == {"region": "us"}
    assert by_event["assignment.created"]["data"]["credential_keys"] == ["token"]
    assert by_event["assignment.created"]["data"]["plugin_id"] == service["id"]
    assert by_event["service.deprecated"]["data"]["status_reason"] == "v2 is out"
    assert by_event["installation.created"]["occurred_at"].endswith("+00:00")
    # occurred_at orders them: the update after the first install, the uninstall before the revival.
    times = {(r.json["event"], r.json["data"].get("config", {}).get("region")): r.json["occurred_at"] for r in received
             if r.json["event"].startswith("installation.")}
    assert times[("installation.created", "eu")] < times[("installation.updated", "us")]


async def test_a_rolled_back_change_sends_nothing(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                  vendor: Vendor) -> None:
    client = gateway
    service, _ = await webhook_service(client, make, vendor.url("rollback"), ALL_EVENTS)
    space, owner = await space_owner(make)
    await vendor.wait_for("rollback", 1)  # service.approved
    with pytest.raises(RuntimeError):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2)",
                               UUID(service["id"]), space)
            assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE service_id = $1 "
                                       "AND event = 'installation.created'", UUID(service["id"])) == 1
            raise RuntimeError("roll back")
    # A refused API change (already installed: 409) rolls back too.
    assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                              json={"slug": service["slug"]})).status == 201
    assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                              json={"slug": service["slug"]})).status == 409
    await vendor.wait_for("rollback", 2)
    await asyncio.sleep(1.5)
    assert [r.json["event"] for r in vendor.of("rollback")] == ["service.approved", "installation.created"]
    assert [r["event"] for r in await stored(db, service["id"])] == ["service.approved", "installation.created"]


async def test_only_the_events_the_service_takes(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                 vendor: Vendor) -> None:
    """The contract's example: installing, patching and uninstalling deliver exactly
    installation.created and installation.deleted."""
    client = gateway
    service, _ = await webhook_service(client, make, vendor.url("two"), ["installation.created", "installation.deleted"])
    space, owner = await space_owner(make)
    installed = await client.post(f"{API}/spaces/{space}/installations", headers=owner, json={"slug": service["slug"]})
    one = f"{API}/spaces/{space}/installations/{(await installed.json())['id']}"
    assert (await client.patch(one, headers=owner, json={"config": {"a": 1}, "status": "inactive"})).status == 200
    assert (await client.delete(one, headers=owner)).status == 204
    await vendor.wait_for("two", 2)
    await asyncio.sleep(1.5)
    assert [r.json["event"] for r in vendor.of("two")] == ["installation.created", "installation.deleted"]
    assert len(await stored(db, service["id"])) == 2


async def test_no_events_without_webhook_support_or_url(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                        vendor: Vendor) -> None:
    client = gateway
    quiet, maintainer = await webhook_service(client, make, vendor.url("quiet"), ALL_EVENTS, approve=False)
    turned_off = await client.patch(f"{API}/services/{quiet['id']}", headers=maintainer,
                                    json={"webhook_supported": False})
    assert turned_off.status == 200, await turned_off.text()
    no_url = await client.patch(f"{API}/services/{quiet['id']}", headers=maintainer,
                                json={"webhook_supported": True, "capabilities": {}})
    assert no_url.status == 200
    assert (await client.put(f"{API}/services/{quiet['id']}/status", headers=await make.admin(),
                             json={"status": "approved"})).status == 200
    space, owner = await space_owner(make)
    assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                              json={"slug": quiet["slug"]})).status == 201
    assert await stored(db, quiet["id"]) == []


async def test_deleting_a_service_or_a_space_still_works(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                         vendor: Vendor) -> None:
    """Cascades: a hard-deleted service takes its installations and deliveries along (no event can
    be written for a service that is gone); a deleted space's uninstalls are still announced."""
    client = gateway
    service, _ = await webhook_service(client, make, vendor.url("gone"), ALL_EVENTS)
    space, owner = await space_owner(make)
    assert (await client.post(f"{API}/spaces/{space}/installations", headers=owner,
                              json={"slug": service["slug"]})).status == 201
    await vendor.wait_for("gone", 2)
    await db.execute("DELETE FROM spaces WHERE id = $1", space)
    await vendor.wait_for("gone", 3)
    assert vendor.of("gone")[-1].json["event"] == "installation.deleted"
    other = await make.space()
    await db.execute("INSERT INTO service_installations (service_id, space_id) VALUES ($1, $2)",
                     UUID(service["id"]), other)
    await db.execute("DELETE FROM service_registry WHERE id = $1", UUID(service["id"]))
    assert await stored(db, service["id"]) == []
