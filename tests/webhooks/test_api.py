"""The deliveries API (maintainers and platform admins; in the OpenAPI document), the outbox's
row-level security, capabilities.webhook_url's checks and the settings."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db.pool import create_pool
from gateway.settings import DEFAULT_WEBHOOK_RETRY_SCHEDULE, ConfigError, Settings
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.webhooks.conftest import ALL_EVENTS, API, Vendor, space_owner, stored, until, webhook_service


async def _arranged(client: TestClient, make: Factory, db: asyncpg.Pool,
                    vendor: Vendor) -> tuple[dict[str, Any], dict[str, str], UUID, dict[str, str]]:
    """A service with three deliveries (approved, created, deleted): the maintainer's headers, the
    space it was installed in and that space's owner."""
    vendor.plans["listed"] = [200]
    service, maintainer = await webhook_service(client, make, vendor.url("listed"), ALL_EVENTS)
    space, owner = await space_owner(make)
    installed = await client.post(f"{API}/spaces/{space}/installations", headers=owner, json={"slug": service["slug"]})
    assert (await client.delete(f"{API}/spaces/{space}/installations/{(await installed.json())['id']}",
                                headers=owner)).status == 204
    await until(lambda: _all_delivered(db, service["id"], 3), what="three delivered")
    return service, maintainer, space, owner


async def _all_delivered(db: asyncpg.Pool, service_id: str, count: int) -> bool:
    rows = await stored(db, service_id)
    return len(rows) == count and all(r["status"] == "delivered" for r in rows)


async def test_maintainers_and_admins_list_deliveries_newest_first(gateway: TestClient, make: Factory,
                                                                   db: asyncpg.Pool, vendor: Vendor) -> None:
    client = gateway
    service, maintainer, _, _ = await _arranged(client, make, db, vendor)
    url = f"{API}/services/{service['id']}/webhook-deliveries"
    seen, cursor = [], None
    while True:
        page = await client.get(url, headers=maintainer, params={"limit": "1", **({"cursor": cursor} if cursor else {})})
        assert page.status == 200, await page.text()
        body = await page.json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [d["event"] for d in seen] == ["installation.deleted", "installation.created", "service.approved"]
    assert all(d["status"] == "delivered" and d["attempts"] == 1 and d["last_status_code"] == 200 for d in seen)
    admin = await client.get(url, headers=await make.admin(), params={"status": "delivered"})
    assert admin.status == 200 and len((await admin.json())["items"]) == 3
    assert (await (await client.get(url, headers=maintainer, params={"status": "failed"})).json())["items"] == []
    assert (await client.get(url, headers=maintainer, params={"status": "lost"})).status == 422
    assert (await client.get(url, headers=maintainer, params={"cursor": "nope"})).status == 422
    assert (await client.get(url)).status == 401


async def test_another_spaces_admin_sees_nothing(gateway: TestClient, make: Factory, db: asyncpg.Pool,
                                                 vendor: Vendor, database_url: str) -> None:
    client = gateway
    service, _, space, owner = await _arranged(client, make, db, vendor)
    other_space, other_admin = await space_owner(make)
    url = f"{API}/services/{service['id']}/webhook-deliveries"
    delivery = (await stored(db, service["id"]))[0]["id"]
    redeliver = f"{url}/{delivery}/redeliver"
    for headers in (other_admin, owner):  # not maintainers: the installing space's owner neither
        assert (await client.get(url, headers=headers)).status == 403
        assert (await client.post(redeliver, headers=headers)).status == 403
    # A pending service: not even its existence.
    pending, _ = await webhook_service(client, make, vendor.url("pending"), ALL_EVENTS, approve=False)
    assert (await client.get(f"{API}/services/{pending['id']}/webhook-deliveries", headers=other_admin)).status == 404
    assert (await client.get(f"{API}/services/{uuid.uuid4()}/webhook-deliveries", headers=other_admin)).status == 404

    # And the database itself: as the gateway's role, in either space, no maintainer: no row, no
    # write, no redelivery.
    pool = await create_pool(database_url, min_size=1, max_size=1, role="gateway_app")
    try:
        for space_id in (other_space, space):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.space_id', $1, true), set_config('app.user_id', $2, true)",
                                   str(space_id), str(await make.user()))
                assert await conn.fetch("SELECT * FROM webhook_deliveries") == []
                assert await conn.fetch("SELECT * FROM gateway_webhook_redeliver($1, $2)",
                                        UUID(service["id"]), delivery) == []
        async with pool.acquire() as conn:
            for statement in ("UPDATE webhook_deliveries SET status = 'pending'", "DELETE FROM webhook_deliveries",
                              f"INSERT INTO webhook_deliveries (id, service_id, event, occurred_at, body) VALUES "
                              f"(gen_random_uuid(), '{service['id']}', 'service.approved', now(), '{{}}')"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the triggers' helper is the courier's
                await conn.execute("SELECT gateway_webhook_enqueue($1, NULL, NULL, 'service.approved', '{}')",
                                   UUID(service["id"]))
    finally:
        await pool.close()
    assert [r["status"] for r in await stored(db, service["id"])] == ["delivered"] * 3


async def test_the_outbox_is_held_by_row_level_security(db: asyncpg.Pool) -> None:
    row = await db.fetchrow("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                            "WHERE oid = 'public.webhook_deliveries'::regclass")
    assert row["relrowsecurity"] and row["relforcerowsecurity"]
    functions = await db.fetch(
        "SELECT proname, prosecdef, proowner::regrole::text AS owner, proconfig FROM pg_proc "
        "WHERE proname LIKE 'gateway_webhook_%' AND pronamespace = 'public'::regnamespace")
    definers = {f["proname"] for f in functions if f["prosecdef"]}
    assert {"gateway_webhook_installation", "gateway_webhook_service", "gateway_webhook_assignment",
            "gateway_webhook_claim", "gateway_webhook_record", "gateway_webhook_redeliver"} <= definers
    for f in functions:
        assert f["owner"] == "gateway_courier" or not f["prosecdef"], f
        assert any(c.startswith("search_path=") for c in f["proconfig"] or []), f
    courier = await db.fetchrow("SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'gateway_courier'")
    assert not (courier["rolcanlogin"] or courier["rolsuper"] or courier["rolbypassrls"])


async def test_the_deliveries_are_in_the_openapi_document(gateway: TestClient) -> None:
    document = await (await gateway.get(f"{API}/openapi.json")).json()
    listed = document["paths"][f"{API}/services/{{service_id}}/webhook-deliveries"]["get"]
    assert {"200", "401", "403", "404", "422", "429", "503"} <= set(listed["responses"])
    assert {p["name"] for p in listed["parameters"]} >= {"service_id", "status", "limit", "cursor"}
    again = document["paths"][f"{API}/services/{{service_id}}/webhook-deliveries/{{delivery_id}}/redeliver"]["post"]
    assert {"202", "401", "403", "404", "429", "503"} <= set(again["responses"])
    assert "WebhookDelivery" in document["components"]["schemas"]


async def test_webhook_url_is_checked_like_target_url(gateway: TestClient, make: Factory, database_url: str) -> None:
    vendor = make.auth(await make.user())

    def body(url: Any) -> dict[str, Any]:
        return {"name": "H", "slug": f"h-{uuid.uuid4().hex[:8]}", "version": "1", "provider": "p",
                "webhook_supported": True, "capabilities": {"webhook_url": url}}
    for bad in ("ftp://hooks.example.com/x", "/relative", "https://user:pw@hooks.example.com/", 42):
        refused = await gateway.post(f"{API}/services", headers=vendor, json=body(bad))
        assert refused.status == 422, (bad, await refused.text())
        assert "webhook_url" in (await refused.text())
    assert (await gateway.post(f"{API}/services", headers=vendor, json=body(None))).status == 201
    async with gateway_client(make_settings(database_url, allow_private_upstreams=False)) as strict:
        for private in ("http://127.0.0.1:9/hook", "https://169.254.169.254/latest", "http://[::1]/h"):
            refused = await strict.post(f"{API}/services", headers=vendor, json=body(private))
            assert refused.status == 422, (private, await refused.text())
            assert "capabilities.webhook_url" in [e["field"] for e in (await refused.json())["errors"]]
        created = await strict.post(f"{API}/services", headers=vendor, json=body("https://hooks.example.com/in"))
        assert created.status == 201, await created.text()
        service = await created.json()
        patched = await strict.patch(f"{API}/services/{service['id']}", headers=vendor,
                                     json={"capabilities": {"webhook_url": "http://10.0.0.1/"}})
        assert patched.status == 422


def test_the_settings() -> None:
    assert Settings.from_env({}).webhook_retry_schedule == DEFAULT_WEBHOOK_RETRY_SCHEDULE == (
        60, 300, 1800, 7200, 21600, 86400)
    assert Settings.from_env({}).webhook_timeout == 10.0
    assert Settings.from_env({"GATEWAY_WEBHOOK_RETRY_SCHEDULE": " 1, 1,2.5"}).webhook_retry_schedule == (1, 1, 2.5)
    assert Settings.from_env({"GATEWAY_WEBHOOK_TIMEOUT": "2.5"}).webhook_timeout == 2.5
    for bad in ("1,,2", "a", "0", "-1", "inf", ",".join(["1"] * 31)):
        with pytest.raises(ConfigError, match="GATEWAY_WEBHOOK_RETRY_SCHEDULE"):
            Settings.from_env({"GATEWAY_WEBHOOK_RETRY_SCHEDULE": bad})
    with pytest.raises(ConfigError, match="GATEWAY_WEBHOOK_TIMEOUT"):
        Settings.from_env({"GATEWAY_WEBHOOK_TIMEOUT": "0"})
