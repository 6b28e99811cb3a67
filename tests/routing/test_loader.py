"""routing.loader: an installation's routes are held to the vendor's own hosts when the table loads."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from routing.loader import build_state, installation_route_problems, origin_of, vendor_origins

SERVICE = uuid.uuid4()
INSTALLATION = uuid.uuid4()
SPACE = uuid.uuid4()


def row(route_path: str, target_url: str, *, installation: bool = True,
        base: str | None = "https://api.vendor.example/v1", auth_config: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "service_id": SERVICE, "service_slug": "svc",
            "installation_id": INSTALLATION if installation else None, "route_path": route_path,
            "method": "GET", "target_url": target_url, "api_base_url": base, "auth_type": None,
            "auth_config": auth_config or {},
            "rate_limit": None, "rate_limit_window": None, "cache_enabled": False, "cache_ttl": None,
            "options": {}, "updated_at": datetime.now(UTC)}


@pytest.mark.parametrize(("url", "origin"), [
    ("https://API.Vendor.example/v1", ("https", "api.vendor.example", 443)),
    ("http://api.vendor.example:80/x/{id}", ("http", "api.vendor.example", 80)),
    ("https://api.vendor.example:8443", ("https", "api.vendor.example", 8443)),
    ("https://bücher.example/", ("https", "xn--bcher-kva.example", 443)),
    ("/relative", None), ("ftp://x.example/", None), ("https://x:{port}/", None), ("", None), (None, None),
])
def test_origin_of(url: str | None, origin: tuple[str, str, int] | None) -> None:
    assert origin_of(url) == origin


def test_the_rule() -> None:
    origins = vendor_origins("https://api.vendor.example/v1", ["/relative", "https://files.vendor.example/f"])
    assert origins == {("https", "api.vendor.example", 443), ("https", "files.vendor.example", 443)}
    for good in ("/reports/{id}", "https://api.vendor.example/other", "https://files.vendor.example:443/x"):
        assert installation_route_problems({"target_url": good}, origins) == []
    for bad in ("https://attacker.example/", "http://api.vendor.example/", "https://api.vendor.example:444/",
                "https://api.vendor.example.attacker.example/", "//attacker.example/x"):
        assert [p["field"] for p in installation_route_problems({"target_url": bad}, origins)] == ["target_url"]
    token = {"target_url": "/x", "auth_config": {"token_url": "https://api.vendor.example/token"}}
    assert [p["field"] for p in installation_route_problems(token, origins)] == ["auth_config.token_url"]


def test_build_state_leaves_out_installation_routes_off_the_vendors_hosts(
        caplog: pytest.LogCaptureFixture) -> None:
    wide = row("/wide", "https://files.vendor.example/wide", installation=False)
    relative = row("/rel", "/rel")
    on_base = row("/base", "https://api.vendor.example/base")
    on_wide = row("/files", "https://files.vendor.example/files")
    off_host = row("/collect", "https://attacker.example/collect")
    own_token = row("/token", "/token", auth_config={"token_url": "https://api.vendor.example/t"})
    # A service-wide route may go anywhere the vendor likes (upstream safety judges it).
    vendor_elsewhere = row("/cdn", "https://cdn.example/x", installation=False)
    installation = {"id": INSTALLATION, "space_id": SPACE, "service_id": SERVICE, "service_slug": "svc",
                    "status": "active", "permissions": {}, "credentials": {}, "api_auth_type": None,
                    "api_auth_config": {}, "updated_at": None}
    with caplog.at_level(logging.WARNING, "gateway.routing"):
        state = build_state([wide, relative, on_base, on_wide, off_host, own_token, vendor_elsewhere],
                            [installation])
    assert {r.id for r in state.table.routes()} == {
        wide["id"], relative["id"], on_base["id"], on_wide["id"], vendor_elsewhere["id"]}
    assert str(off_host["id"]) in caplog.text and str(own_token["id"]) in caplog.text
    assert str(on_base["id"]) not in caplog.text
