"""Logs: JSON lines, redaction, one access line per request, W3C traceparent end to end."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from db.encryption import generate_key_ring_entry
from gateway.logs import ACCESS_LOG, ACCESS_LOGGER, REDACTED, JsonFormatter, redact_text, redact_value, setup_logging
from gateway.proxy.headers import new_traceparent, traceparent_for, valid_traceparent
from tests.conftest import ASSERTION_KEY, ENCRYPTION_KEYS, JWT_SECRET, leaks_in
from tests.factories import Factory
from tests.plugins import add_route, make_plugin, until_status

API = "/api/v1"
API_KEY = "pgw_0123abcd_" + "k" * 20 + "-" + "Z" * 22
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


def formatted(message: str, *args: Any, exc_info: Any = None, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


# --- redaction, unit by unit ------------------------------------------------------------------

def test_a_line_has_the_base_fields_and_extras() -> None:
    line = formatted("hello %s", "world", request_id="r1", space_id=uuid.UUID(int=1))
    assert line["msg"] == "hello world" and line["level"] == "INFO" and line["logger"] == "gateway.test"
    assert line["ts"].endswith("Z") and line["ts"][10] == "T"  # RFC 3339, UTC
    assert line["request_id"] == "r1" and line["space_id"] == str(uuid.UUID(int=1))


@pytest.mark.parametrize("text, secret, kept", [
    (f"Authorization: Bearer {JWT}", JWT, "Authorization: "),
    ("sent bearer abc.DEF-ghi_123~+/= to it", "abc.DEF-ghi_123", "bearer [redacted]"),
    (f"token {JWT} expired", JWT, "expired"),
    (f"key {API_KEY} used", API_KEY, "pgw_0123abcd_[redacted]"),  # the public prefix stays
    ("odd pgw_notaprefixbutsecret123", "notaprefixbutsecret123", "pgw_[redacted]"),
    ("ring k1:" + "A" * 43 + ",k2:" + "B" * 43, "A" * 43, "k1:[redacted],k2:[redacted]"),
    (ASSERTION_KEY, ASSERTION_KEY.splitlines()[1], REDACTED),
    ("cut -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB", "MHcCAQEEIB", "cut [redacted]"),
    ("postgresql://gateway:hunter2@db:5432/gateway", "hunter2", "postgresql://gateway:[redacted]@db"),
    ("Cookie: session=s3cr3t; theme=dark", "s3cr3t", "Cookie: [redacted]"),
    ("X-API-Key: whatever-it-is", "whatever-it-is", "X-API-Key: [redacted]"),
    ("GATEWAY_JWT_SECRET=abc123 rest", "abc123", "GATEWAY_JWT_SECRET=[redacted] rest"),
    ("{'client_secret': 'cs-1', 'client_id': 'id-1'}", "cs-1", "'client_id': 'id-1'"),
    ("credentials={'user': 'u', 'pw': 'p'} done", "'pw': 'p'", "credentials=[redacted] done"),
])
def test_secrets_in_text_are_redacted(text: str, secret: str, kept: str) -> None:
    for line in (formatted(text)["msg"], formatted("%s", text)["msg"], redact_text(text)):
        assert secret not in line and kept in line


def test_ordinary_text_is_left_alone() -> None:
    text = ("GET /spaces/{space_id}/plugins/{tail:.*} 200 at 12:34:56 via gateway.proxy.forward, "
            "prefix pgw_0123abcd, trace 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert redact_text(text) == text


def test_extras_are_redacted_by_key_at_any_depth() -> None:
    line = formatted("upstream", headers={"Authorization": "a", "proxy-authorization": "b", "Cookie": "c",
                                          "Set-Cookie": "d", "X-Api-Key": "e", "Accept": "json"},
                     config={"oauth2": {"client_secret": "f", "client_id": "cid"}, "password": "g",
                             "items": [{"private_key": "h"}, {"kubeconfig": "i"}, {"key": "j"}]},
                     token="k", credentials={"api_key": "l"}, refresh_token="m", credential_keys=["api_key"],
                     note=f"with Bearer {JWT}")
    text = orjson.dumps(line).decode()
    for secret in "abcdefghijklm":
        assert f'"{secret}"' not in text
    assert line["headers"]["Accept"] == "json" and line["config"]["oauth2"]["client_id"] == "cid"
    assert line["token"] == REDACTED and line["credentials"] == REDACTED
    assert line["credential_keys"] == ["api_key"]  # names of credentials are not credentials
    assert JWT not in line["note"]


def test_redact_value_keeps_shapes() -> None:
    assert redact_value({"a": (1, 2.5, None, True), "api-key": {"x": 1}, 3: b"Bearer xyz"}) == {
        "a": [1, 2.5, None, True], "api-key": REDACTED, "3": "Bearer [redacted]"}


def test_an_exception_is_one_field_with_its_text_redacted() -> None:
    try:
        raise ValueError(f"upstream refused Authorization: Bearer {JWT}")
    except ValueError:
        line = formatted("failed %s", f"Bearer {JWT}", exc_info=sys.exc_info())
    assert line["error"]["type"] == "ValueError"
    assert "Traceback (most recent call last)" in line["error"]["traceback"]
    assert "ValueError: upstream refused" in line["error"]["traceback"]
    assert JWT not in orjson.dumps(line).decode()


def test_setup_logging_installs_json_on_stderr_once(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        setup_logging("info")
        setup_logging()
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.INFO
        logging.getLogger("gateway.test").info("hello", extra={"password": "pw-1"})
        line = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["msg"] == "hello" and line["password"] == REDACTED
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


async def test_the_access_line_is_written_directly_and_as_the_formatter_would(
        capsys: pytest.CaptureFixture[str]) -> None:
    """With setup_logging's handler the only listener, access lines skip the logging framework:
    the lines of one loop turn reach stderr in one write, with JsonFormatter's keys and values."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    fields = {"request_id": "r1", "method": "GET", "route": "/x", "status": 200, "duration_ms": 1.5,
              "space_id": None}
    try:
        setup_logging("info")
        capsys.readouterr()
        ACCESS_LOG.write("GET /x 200", fields)
        ACCESS_LOG.write("GET /x 200", {**fields, "request_id": "r2"})
        assert capsys.readouterr().err == ""  # buffered until the loop's next turn
        await asyncio.sleep(0)
        lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
        record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "%s", ("GET /x 200",), None)
        record.__dict__.update(fields)
        expected = orjson.loads(JsonFormatter().format(record))
        assert [line["request_id"] for line in lines] == ["r1", "r2"]
        assert {k: v for k, v in lines[0].items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
        assert list(lines[0]) == list(expected)  # the same keys, in the same order
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_the_access_line_goes_through_logging_when_someone_else_listens(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        ACCESS_LOG.write("GET /y 404", {"request_id": "r3", "status": 404})
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.getMessage() == "GET /y 404" and record.__dict__["request_id"] == "r3"


def test_setup_logging_leaves_a_configured_root_alone() -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    setup_logging()
    assert root.handlers == before


def test_the_session_check_names_leaks_without_repeating_them() -> None:
    secret_line = orjson.dumps({"msg": JWT_SECRET}).decode()
    assert leaks_in(f"ok\n{secret_line}\n") == [(2, "JWT secret")]
    key = ENCRYPTION_KEYS.split(",")[0].partition(":")[2]
    assert leaks_in(f"{key}\nBearer abcdefghij\n{JWT}") == [(1, "encryption key 1"), (2, "bearer token"), (3, "JWT")]
    assert leaks_in(redact_text(f"{generate_key_ring_entry('x')} Bearer abcdefghij {JWT} {API_KEY}")) == []


# --- traceparent ------------------------------------------------------------------------------

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value, valid", [
    (VALID, True),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),  # only version 00
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),  # zero parent id
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # uppercase
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),  # short trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", False),
    (VALID + "-extra", False),
    ("", False),
    (None, False),
])
def test_traceparent_validation(value: str | None, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_a_traceparent_is_kept_when_valid_else_made_anew() -> None:
    def headers(*values: str) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict([("traceparent", v) for v in values]))

    assert traceparent_for(headers(VALID)) == VALID
    for sent in (headers(), headers("garbage"), headers(VALID, VALID)):
        made = traceparent_for(sent)
        assert valid_traceparent(made) and made != VALID and made.endswith("-01")
    assert new_traceparent() != new_traceparent()


# --- end to end: one access line per request, no secret anywhere -------------------------------

class Upstream:
    def __init__(self) -> None:
        self.seen: list[CIMultiDictProxy[str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/echo", self.echo)

    async def echo(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append(request.headers)
        return web.json_response({"ok": True})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    up = Upstream()
    server: TestServer = await aiohttp_server(up.app)
    return up, str(server.make_url("")).rstrip("/")


def read_log(path: Path, start: int) -> tuple[str, list[dict[str, Any]]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    raw = path.read_bytes()[start:].decode("utf-8")
    return raw, [orjson.loads(line) for line in raw.splitlines() if line]


async def test_one_access_line_per_request_and_no_secrets(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                          upstream: tuple[Upstream, str],
                                                          session_log_file: Path) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    credential = f"secret-{plugin.slug}"  # make_plugin's api_key credential, sent upstream as X-Plugin-Key
    await add_route(db, plugin.service_id, "/cached", "/echo", cache_enabled=True, cache_ttl=60)
    await until_status(client, plugin.path("/cached"), plugin.member, 200)  # the MISS, once routes load
    jwt = plugin.member["Authorization"].removeprefix("Bearer ")
    created = await client.post(f"{API}/spaces/{plugin.space_id}/api-keys", json={"name": "logs"},
                                headers=plugin.owner)
    assert created.status == 201, await created.text()
    api_key = (await created.json())["key"]
    cookie, query_secret = f"session=cookie-{uuid.uuid4().hex}", f"query-{uuid.uuid4().hex}"
    invalid_traceparent = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"

    start = session_log_file.stat().st_size
    rid = {name: f"logs-{name}-{uuid.uuid4().hex[:8]}" for name in ("jwt", "key", "hit", "api", "denied")}
    proxied = await client.post(
        plugin.path(f"/echo?token={query_secret}"), data=b"0123456789",
        headers={**plugin.member, "Cookie": cookie, "traceparent": VALID, "tracestate": "v=1",
                 "X-Request-ID": rid["jwt"]})
    assert proxied.status == 200, await proxied.text()
    by_key = await client.get(plugin.path("/echo"), headers={
        "X-API-Key": api_key, "traceparent": invalid_traceparent, "X-Request-ID": rid["key"]})
    assert by_key.status == 200, await by_key.text()
    hit = await client.get(plugin.path("/cached"), headers={**plugin.member, "X-Request-ID": rid["hit"]})
    assert hit.status == 200 and hit.headers["X-Cache-Status"] == "HIT"
    api = await client.get(f"{API}/spaces/{plugin.space_id}/installations?limit=5",
                           headers={"X-API-Key": api_key, "Cookie": cookie, "X-Request-ID": rid["api"]})
    assert api.status == 200, await api.text()
    denied = await client.get(f"{API}/spaces/{plugin.space_id}/installations",
                              headers={"Authorization": f"Bearer {api_key}x", "X-Request-ID": rid["denied"]})
    assert denied.status == 401

    raw, lines = read_log(session_log_file, start)
    access = {name: [line for line in lines if line["logger"] == "gateway.access" and line["request_id"] == r]
              for name, r in rid.items()}
    assert all(len(found) == 1 for found in access.values()), access
    line = {name: found[0] for name, found in access.items()}

    fields = {"ts", "level", "logger", "msg", "request_id", "method", "route", "service", "route_id", "space_id",
              "status", "duration_ms", "upstream_ms", "cache", "bytes_in", "bytes_out", "remote", "traceparent"}
    assert all(set(found) == fields for found in line.values()), line
    first = line["jwt"]
    assert first["method"] == "POST" and first["status"] == 200 and first["service"] == plugin.slug
    assert first["route_id"] == str(plugin.routes["/{rest:path}"]) and first["route"] == "/{rest:path}"
    assert first["space_id"] == str(plugin.space_id) and first["remote"] == "127.0.0.1"
    assert first["bytes_in"] == 10 and first["bytes_out"] > 0 and first["cache"] is None
    assert 0 <= first["upstream_ms"] <= first["duration_ms"]
    # A valid traceparent is passed on unchanged; an invalid one is replaced by a new trace.
    assert first["traceparent"] == VALID and up.seen[-2]["traceparent"] == VALID
    assert up.seen[-2]["tracestate"] == "v=1"
    made = line["key"]["traceparent"]
    assert valid_traceparent(made) and made != invalid_traceparent and up.seen[-1]["traceparent"] == made
    assert line["key"]["method"] == "GET" and line["key"]["bytes_in"] == 0 and line["key"]["service"] == plugin.slug
    assert line["hit"]["cache"] == "HIT" and line["hit"]["upstream_ms"] is None
    assert line["hit"]["route_id"] == str(await db.fetchval(
        "SELECT id FROM service_api_routes WHERE service_id = $1 AND route_path = '/cached'", plugin.service_id))
    for name in ("api", "denied"):
        assert line[name]["route"] == "/api/v1/spaces/{space_id}/installations"
        assert line[name]["service"] is None and line[name]["route_id"] is None and line[name]["upstream_ms"] is None
        assert line[name]["space_id"] == str(plugin.space_id) and valid_traceparent(line[name]["traceparent"])
    assert line["api"]["status"] == 200 and line["denied"]["status"] == 401 and line["denied"]["bytes_out"] > 0

    for secret in (jwt, api_key, api_key.partition("_")[2].partition("_")[2], cookie, query_secret, credential):
        assert secret not in raw
    assert leaks_in(raw) == []


async def test_a_failing_handler_logs_its_error_and_one_access_line(client: TestClient,
                                                                     session_log_file: Path) -> None:
    start = session_log_file.stat().st_size
    rid = f"logs-404-{uuid.uuid4().hex[:8]}"
    missing = await client.get("/no/such/path?password=p-1", headers={"X-Request-ID": rid,
                                                                      "Authorization": f"Bearer {JWT}"})
    assert missing.status == 404
    raw, lines = read_log(session_log_file, start)
    access = [line for line in lines if line["logger"] == "gateway.access" and line["request_id"] == rid]
    assert len(access) == 1 and access[0]["status"] == 404 and access[0]["route"] is None
    assert access[0]["space_id"] is None and "p-1" not in raw and JWT not in raw
