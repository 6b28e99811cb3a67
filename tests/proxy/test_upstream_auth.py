"""Upstream authentication against a real OAuth2 token endpoint (an aiohttp test server)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiohttp
import orjson
import pytest
from aiohttp import web

from db.encryption import KeyRing, associated_data, generate_key_ring_entry
from gateway.proxy.upstream_auth import UpstreamAuth, UpstreamAuthError
from routing.loader import Installation
from routing.table import Route

KEYRING = KeyRing.parse(generate_key_ring_entry("k1"))
SECRET = "s3cr3t:with&odd=chars é"
LEAK = "LEAKED-BODY-client_secret=" + SECRET


@dataclass
class TokenServer:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None  # None: a fresh valid token response
    expires_in: int | None = 3600
    delay: float = 0.0
    redirect_to: str | None = None


@pytest.fixture
async def token_server(aiohttp_server: Any) -> TokenServer:
    state = TokenServer()

    async def token(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        state.requests.append({"authorization": request.headers.get("Authorization"), "path": request.path,
                               "form": dict(form), "content_type": request.content_type})
        await asyncio.sleep(state.delay)
        if state.redirect_to is not None:
            raise web.HTTPFound(state.redirect_to)
        if state.body is not None:
            return web.Response(status=state.status, body=state.body, content_type="application/json")
        answer: dict[str, Any] = {"access_token": f"tok-{len(state.requests)}", "token_type": "Bearer"}
        if state.expires_in is not None:
            answer["expires_in"] = state.expires_in
        return web.json_response(answer, status=state.status)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/elsewhere", token)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/oauth/token"))
    return state


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def auth(session: aiohttp.ClientSession) -> UpstreamAuth:
    return UpstreamAuth(KEYRING, session, allow_private=True, token_timeout=2.0)


def make_installation(credentials: dict[str, Any], *, auth_type: str | None = None,
                      config: dict[str, Any] | None = None, sealed_for: UUID | None = None,
                      version: str = "v1", inst_id: UUID | None = None) -> Installation:
    inst_id = inst_id or uuid.uuid4()
    aad = associated_data("service_installations", sealed_for or inst_id, "credentials")
    return Installation(
        id=inst_id, space_id=uuid.uuid4(), service_id=uuid.uuid4(), service_slug="svc",
        status="active", min_role="viewer", credentials=KEYRING.seal(credentials, aad),
        api_auth_type=auth_type, api_auth_config=config or {}, version=version)


def make_route(auth_type: str | None = None, config: dict[str, Any] | None = None) -> Route:
    return Route(id=uuid.uuid4(), service_id=uuid.uuid4(), service_slug="svc", route_path="/x",
                 method="GET", target_url="https://upstream.example/x", auth_type=auth_type,
                 auth_config=config or {})


def oauth2(server: TokenServer, scope: str | None = "read write") -> tuple[Route, Installation]:
    config: dict[str, Any] = {"token_url": server.url}
    if scope is not None:
        config["scope"] = scope
    installation = make_installation({"client_id": "my client", "client_secret": SECRET},
                                     auth_type="oauth2", config=config)
    return make_route(), installation


# -- static credentials -----------------------------------------------------------------------

async def test_api_key_default_header(auth: UpstreamAuth) -> None:
    installation = make_installation({"api_key": "k-123"}, auth_type="api_key")
    assert await auth.headers(make_route(), installation) == {"X-API-Key": "k-123"}


async def test_api_key_custom_header(auth: UpstreamAuth) -> None:
    installation = make_installation({"api_key": "k-123"}, auth_type="api_key",
                                     config={"header_name": "X-Vendor-Key"})
    assert await auth.headers(make_route(), installation) == {"X-Vendor-Key": "k-123"}


async def test_api_key_reserved_header_name_refused(auth: UpstreamAuth) -> None:
    installation = make_installation({"api_key": "k"}, auth_type="api_key",
                                     config={"header_name": "X-Gateway-User-Id"})
    with pytest.raises(UpstreamAuthError):
        await auth.headers(make_route(), installation)


async def test_route_auth_type_overrides_service(auth: UpstreamAuth) -> None:
    installation = make_installation({"api_key": "k-1", "token": "t-1"}, auth_type="api_key")
    assert await auth.headers(make_route("bearer"), installation) == {"Authorization": "Bearer t-1"}
    assert await auth.headers(make_route("none"), installation) == {}
    route = make_route("api_key", {"header_name": "X-Route-Key"})
    assert await auth.headers(route, installation) == {"X-Route-Key": "k-1"}


async def test_bearer(auth: UpstreamAuth) -> None:
    installation = make_installation({"token": "abc.def"}, auth_type="bearer")
    assert await auth.headers(make_route(), installation) == {"Authorization": "Bearer abc.def"}


async def test_basic(auth: UpstreamAuth) -> None:
    installation = make_installation({"username": "ada", "password": "pä:ss"}, auth_type="basic")
    headers = await auth.headers(make_route(), installation)
    scheme, _, encoded = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "ada:pä:ss"


@pytest.mark.parametrize("auth_type", [None, "none"])
async def test_none(auth: UpstreamAuth, auth_type: str | None) -> None:
    installation = make_installation({}, auth_type=auth_type)
    assert await auth.headers(make_route(), installation) == {}
    assert not auth.is_oauth2(make_route(), installation)


@pytest.mark.parametrize(("auth_type", "credentials"), [
    ("api_key", {"token": "x"}), ("bearer", {"api_key": "x"}), ("basic", {"username": "u"}),
    ("oauth2", {"client_id": "c"}), ("bearer", {}), ("bearer", {"token": ""}),
])
async def test_missing_credential_key(auth: UpstreamAuth, auth_type: str,
                                      credentials: dict[str, Any]) -> None:
    installation = make_installation(credentials, auth_type=auth_type,
                                     config={"token_url": "http://127.0.0.1:9/t"})
    with pytest.raises(UpstreamAuthError):
        await auth.headers(make_route(), installation)


async def test_unknown_auth_type(auth: UpstreamAuth) -> None:
    installation = make_installation({"token": "x"}, auth_type="hmac")
    with pytest.raises(UpstreamAuthError):
        await auth.headers(make_route(), installation)


async def test_header_injection_refused(auth: UpstreamAuth) -> None:
    installation = make_installation({"token": "x\r\nX-Evil: 1"}, auth_type="bearer")
    with pytest.raises(UpstreamAuthError):
        await auth.headers(make_route(), installation)


async def test_ciphertext_of_another_installation(auth: UpstreamAuth) -> None:
    installation = make_installation({"token": "t"}, auth_type="bearer", sealed_for=uuid.uuid4())
    with pytest.raises(UpstreamAuthError) as caught:
        await auth.headers(make_route(), installation)
    assert "t" not in str(caught.value).split()


async def test_credentials_reopened_after_invalidate(auth: UpstreamAuth) -> None:
    inst_id = uuid.uuid4()
    first = make_installation({"token": "old"}, auth_type="bearer", inst_id=inst_id)
    assert await auth.headers(make_route(), first) == {"Authorization": "Bearer old"}
    # Same id and version with other credentials: the cache still serves the old ones...
    changed = make_installation({"token": "new"}, auth_type="bearer", inst_id=inst_id)
    assert await auth.headers(make_route(), changed) == {"Authorization": "Bearer old"}
    # ...until invalidated, or until the version moves.
    auth.invalidate(inst_id)
    assert await auth.headers(make_route(), changed) == {"Authorization": "Bearer new"}
    newer = make_installation({"token": "newer"}, auth_type="bearer", inst_id=inst_id, version="v2")
    assert await auth.headers(make_route(), newer) == {"Authorization": "Bearer newer"}


# -- OAuth2 -----------------------------------------------------------------------------------

async def test_oauth2_token_request(auth: UpstreamAuth, token_server: TokenServer) -> None:
    route, installation = oauth2(token_server)
    assert auth.is_oauth2(route, installation)
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    [request] = token_server.requests
    assert request["content_type"] == "application/x-www-form-urlencoded"
    assert request["form"] == {"grant_type": "client_credentials", "scope": "read write"}
    scheme, _, encoded = request["authorization"].partition(" ")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: form-encoded, then Basic.
    assert base64.b64decode(encoded).decode() == "my+client:s3cr3t%3Awith%26odd%3Dchars+%C3%A9"


async def test_oauth2_without_scope(auth: UpstreamAuth, token_server: TokenServer) -> None:
    route, installation = oauth2(token_server, scope=None)
    await auth.headers(route, installation)
    assert token_server.requests[0]["form"] == {"grant_type": "client_credentials"}


async def test_oauth2_token_cached(auth: UpstreamAuth, token_server: TokenServer) -> None:
    token_server.expires_in = None  # default lifetime: 3600 s
    route, installation = oauth2(token_server)
    for _ in range(5):
        assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    assert len(token_server.requests) == 1


async def test_oauth2_refetched_after_drop(auth: UpstreamAuth, token_server: TokenServer) -> None:
    route, installation = oauth2(token_server)
    sent = await auth.headers(route, installation)
    auth.drop_token(route, installation, sent=sent)
    # A second 401 carrying the same (already dropped) token must not drop the new one.
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-2"}
    auth.drop_token(route, installation, sent=sent)
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-2"}
    auth.drop_token(route, installation)
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-3"}
    assert len(token_server.requests) == 3


async def test_oauth2_refetched_near_expiry(auth: UpstreamAuth, token_server: TokenServer) -> None:
    token_server.expires_in = 20  # within the 30 s margin from the start
    route, installation = oauth2(token_server)
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-2"}


async def test_oauth2_expiry_with_clock(session: aiohttp.ClientSession,
                                        token_server: TokenServer) -> None:
    now = [1000.0]
    auth = UpstreamAuth(KEYRING, session, allow_private=True, clock=lambda: now[0])
    token_server.expires_in = 100
    route, installation = oauth2(token_server)
    await auth.headers(route, installation)
    now[0] += 69  # 31 s left: still good
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    now[0] += 2  # 29 s left: refreshed
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-2"}


async def test_oauth2_one_request_for_concurrent_callers(auth: UpstreamAuth,
                                                         token_server: TokenServer) -> None:
    token_server.delay = 0.1
    route, installation = oauth2(token_server)
    results = await asyncio.gather(*(auth.headers(route, installation) for _ in range(100)))
    assert {r["Authorization"] for r in results} == {"Bearer tok-1"}
    assert len(token_server.requests) == 1


async def test_oauth2_concurrent_failure_is_shared(auth: UpstreamAuth,
                                                   token_server: TokenServer) -> None:
    token_server.delay, token_server.status, token_server.body = 0.1, 500, b"{}"
    route, installation = oauth2(token_server)
    results = await asyncio.gather(*(auth.headers(route, installation) for _ in range(20)),
                                   return_exceptions=True)
    assert all(isinstance(r, UpstreamAuthError) for r in results)
    assert len(token_server.requests) == 1


async def test_oauth2_cancelled_caller_does_not_cancel_fetch(auth: UpstreamAuth,
                                                             token_server: TokenServer) -> None:
    token_server.delay = 0.1
    route, installation = oauth2(token_server)
    first = asyncio.create_task(auth.headers(route, installation))
    second = asyncio.create_task(auth.headers(route, installation))
    await asyncio.sleep(0.03)
    first.cancel()
    assert await second == {"Authorization": "Bearer tok-1"}
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.parametrize(("status", "body"), [
    (500, orjson.dumps({"error": LEAK})),
    (400, orjson.dumps({"error": "invalid_client", "error_description": LEAK})),
    (200, LEAK.encode()),
    (200, orjson.dumps({"access_token": LEAK.replace(" ", "-"), "token_type": "mac"})),
    (200, orjson.dumps({"token_type": "bearer", "note": LEAK})),
    (200, orjson.dumps({"access_token": "t", "token_type": "bearer", "expires_in": LEAK})),
    (200, orjson.dumps([LEAK])),
])
async def test_oauth2_endpoint_failure(auth: UpstreamAuth, token_server: TokenServer,
                                       status: int, body: bytes) -> None:
    token_server.status, token_server.body = status, body
    route, installation = oauth2(token_server)
    with pytest.raises(UpstreamAuthError) as caught:
        await auth.headers(route, installation)
    assert_neutral(caught.value)


async def test_oauth2_redirect_not_followed(auth: UpstreamAuth, token_server: TokenServer) -> None:
    token_server.redirect_to = token_server.url.replace("/oauth/token", "/elsewhere")
    route, installation = oauth2(token_server)
    with pytest.raises(UpstreamAuthError) as caught:
        await auth.headers(route, installation)
    assert len(token_server.requests) == 1  # /elsewhere was never asked
    assert_neutral(caught.value)


async def test_oauth2_timeout(session: aiohttp.ClientSession, token_server: TokenServer) -> None:
    auth = UpstreamAuth(KEYRING, session, allow_private=True, token_timeout=0.05)
    token_server.delay = 0.5
    route, installation = oauth2(token_server)
    with pytest.raises(UpstreamAuthError):
        await auth.headers(route, installation)


async def test_oauth2_connection_refused(auth: UpstreamAuth, unused_tcp_port: int) -> None:
    installation = make_installation({"client_id": "c", "client_secret": "s"}, auth_type="oauth2",
                                     config={"token_url": f"http://127.0.0.1:{unused_tcp_port}/t"})
    with pytest.raises(UpstreamAuthError):
        await auth.headers(make_route(), installation)


async def test_oauth2_private_token_url_refused(session: aiohttp.ClientSession,
                                                token_server: TokenServer) -> None:
    auth = UpstreamAuth(KEYRING, session, allow_private=False)
    route, installation = oauth2(token_server)
    assert "127.0.0.1" in token_server.url
    with pytest.raises(UpstreamAuthError):
        await auth.headers(route, installation)
    assert token_server.requests == []


async def test_oauth2_invalidate_drops_tokens(auth: UpstreamAuth, token_server: TokenServer) -> None:
    route, installation = oauth2(token_server)
    await auth.headers(route, installation)
    auth.invalidate(uuid.uuid4())  # another installation: kept
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    auth.invalidate()
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-2"}


def assert_neutral(error: UpstreamAuthError) -> None:
    text = str(error) + repr(error.args)
    assert "LEAKED" not in text and SECRET not in text and "s3cr3t" not in text
    assert error.__cause__ is None and error.__suppress_context__ or error.__context__ is None


async def test_an_installation_route_gets_tokens_only_from_the_services_token_url(
        auth: UpstreamAuth, token_server: TokenServer) -> None:
    """A space admin writes an installation's route: a token_url of its own (which the API and the
    route table refuse) is never where the space's client secret goes."""
    _, installation = oauth2(token_server)
    elsewhere = token_server.url.replace("/oauth/token", "/elsewhere")
    route = Route(id=uuid.uuid4(), service_id=installation.service_id, service_slug="svc",
                  installation_id=installation.id, route_path="/x", method="GET",
                  target_url="https://upstream.example/x", auth_type="oauth2",
                  auth_config={"token_url": elsewhere, "scope": "mine"})
    assert await auth.headers(route, installation) == {"Authorization": "Bearer tok-1"}
    assert [(r["path"], r["form"].get("scope")) for r in token_server.requests] == [("/oauth/token", "mine")]
    auth.drop_token(route, installation)

    vendor_without = make_installation({"client_id": "c", "client_secret": SECRET}, auth_type="api_key")
    with pytest.raises(UpstreamAuthError):
        await auth.headers(Route(id=uuid.uuid4(), service_id=vendor_without.service_id, service_slug="svc",
                                 installation_id=vendor_without.id, route_path="/x", method="GET",
                                 target_url="https://upstream.example/x", auth_type="oauth2",
                                 auth_config={"token_url": elsewhere}), vendor_without)
    assert len(token_server.requests) == 1
