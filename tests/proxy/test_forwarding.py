"""What crosses the proxy and how: streaming, limits, timeouts, failures, hygiene."""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import ip_network
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gateway.dev import services as devservices
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import add_route, make_plugin, problem, raw_request, until_status

HOSTILE_RESPONSE_HEADERS = (
    ("WWW-Authenticate", 'Basic realm="plugin"'), ("Clear-Site-Data", '"*"'),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains; preload"), ("Alt-Svc", 'h3=":443"'),
    ("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "true"),
    ("access-control-expose-headers", "X-Plugin-Fine"), ("Proxy-Authenticate", "Basic"),
)
NEVER_RETURNED = {name.lower() for name, _ in HOSTILE_RESPONSE_HEADERS} | {"set-cookie"}


class Upstream:
    """A real upstream with a few behaviours, recording what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.cancelled = asyncio.Event()
        app = self.app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/events", self.events)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/drip", self.drip)
        app.router.add_get("/hang", self.hang)
        app.router.add_route("*", "/hostile", self.hostile)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"headers": dict(request.headers), "size": len(body), "path": request.raw_path})
        return web.json_response({"size": len(body)})

    async def hostile(self, request: web.Request) -> web.Response:
        """Headers no plugin may set on the platform's origin (`?cookie` adds a Set-Cookie)."""
        self.seen.append({"headers": dict(request.headers), "size": 0, "path": request.raw_path})
        headers = [(name, value) for name, value in HOSTILE_RESPONSE_HEADERS]
        if "cookie" in request.query:
            headers.append(("Set-Cookie", "session=plugin"))
        return web.Response(status=int(request.query.get("status", "200")), text="{}",
                            headers=CIMultiDict(headers + [("X-Plugin-Fine", "1"), ("Cache-Control", "max-age=60")]))

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"slow": True})

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(3):
            await response.write(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.3)
        await response.write_eof()
        return response

    async def drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(100):
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        except ConnectionError:
            self.cancelled.set()
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("https://elsewhere.example/next")


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    up = Upstream()
    server: TestServer = await aiohttp_server(up.app, auto_decompress=False)
    return up, str(server.make_url("")).rstrip("/")


async def test_caller_header_of_the_injected_name_is_replaced(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                               upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url, credentials={"api_key": "the-real-one"})
    headers = {**plugin.member, "X-Plugin-Key": "caller-chosen", "Connection": "X-Hop", "X-Hop": "1",
               "X-Forwarded-Host": "evil.example"}
    await until_status(client, plugin.path("/echo"), headers, 200)
    seen = up.seen[-1]["headers"]
    assert seen["X-Plugin-Key"] == "the-real-one"
    assert "X-Hop" not in seen  # named in Connection: hop-by-hop
    assert seen["X-Forwarded-Host"] != "evil.example"


async def test_redirects_are_passed_back(client: TestClient, make: Factory, db: asyncpg.Pool,
                                         upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    response = await until_status(client, plugin.path("/redirect"), plugin.member, 302)
    assert response.headers["Location"] == "https://elsewhere.example/next"


async def test_server_sent_events_arrive_as_produced(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                     upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    started = time.monotonic()
    async with client.get(plugin.path("/events"), headers=plugin.member) as response:
        first = await response.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        rest = await response.read()
    assert first == b"data: 0\n\n"
    assert first_at < 0.3  # the upstream takes 0.9 s in all: the first event was not held back
    assert rest == b"data: 1\n\ndata: 2\n\n"


async def test_upload_is_streamed_and_limited(database_url: str, make: Factory, db: asyncpg.Pool,
                                              upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    async with gateway_client(make_settings(database_url, proxy_max_body_bytes=1_000_000)) as client:
        plugin = await make_plugin(db, make, url)
        await until_status(client, plugin.path("/echo"), plugin.member, 200)
        ok = await client.post(plugin.path("/echo"), headers=plugin.member, data=b"a" * 999_999)
        assert ok.status == 200 and (await ok.json())["size"] == 999_999
        seen_before = len(up.seen)

        too_big = await client.post(plugin.path("/echo"), headers=plugin.member, data=b"a" * 1_000_001)
        assert too_big.status == 413 and too_big.headers["Content-Type"] == "application/problem+json"

        async def chunks() -> Any:  # no Content-Length: counted while streamed
            for _ in range(20):
                yield b"b" * 100_000

        chunked = await client.post(plugin.path("/echo"), headers=plugin.member, data=chunks())
        assert chunked.status == 413
        await asyncio.sleep(0.1)
        assert len(up.seen) == seen_before  # the upstream never got a complete oversized body


async def test_route_option_limits_the_body(client: TestClient, make: Factory, db: asyncpg.Pool,
                                            upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url, options={"max_body_bytes": 10})
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    assert (await client.post(plugin.path("/echo"), headers=plugin.member, data=b"x" * 11)).status == 413


async def test_timeout_is_504_and_unreachable_is_502(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                     upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    slow = await make_plugin(db, make, url, options={"timeout": 0.2})
    await until_status(client, slow.path("/echo"), slow.member, 200)
    started = time.monotonic()
    timed_out = await client.get(slow.path("/slow?s=2"), headers=slow.member)
    assert timed_out.status == 504 and time.monotonic() - started < 1.5
    body = problem(await timed_out.read())
    assert body["status"] == 504 and body["request_id"]

    closed_port = devservices.free_port()  # nothing listens there
    dead = await make_plugin(db, make, f"http://127.0.0.1:{closed_port}")
    response = await until_status(client, dead.path("/anything"), dead.member, 502)
    text = await response.text()
    assert response.headers["Content-Type"] == "application/problem+json"
    for internal in (str(closed_port), "127.0.0.1", "Errno", "Connect", "Traceback"):
        assert internal not in text


async def test_broken_upstream_response_is_502(client: TestClient, make: Factory, db: asyncpg.Pool) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def garbage() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            await loop.sock_recv(conn, 65536)
            await loop.sock_sendall(conn, b"NOT HTTP AT ALL\r\n\r\n")
            conn.close()

    server = asyncio.create_task(garbage())
    try:
        plugin = await make_plugin(db, make, f"http://127.0.0.1:{port}")
        response = await until_status(client, plugin.path("/x"), plugin.member, 502)
        assert "NOT HTTP" not in await response.text()
    finally:
        server.cancel()
        listener.close()


async def test_disconnecting_caller_cancels_the_upstream_call(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                              upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    response = await client.get(plugin.path("/drip"), headers=plugin.member)
    await response.content.read(1024)
    response.close()  # the caller goes away mid-stream
    await asyncio.wait_for(up.cancelled.wait(), timeout=3)


async def test_ambiguous_paths_are_refused(client: TestClient, make: Factory, db: asyncpg.Pool,
                                           upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    other = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    base = f"/spaces/{plugin.space_id}/plugins/{plugin.slug}"
    for rest in ("/a%2Fb", "/a%2fb", "/a/../echo", "/./echo", "/a/%2e%2e/echo", "/a%5Cb",
                 f"/../{other.slug}/echo", f"/..%2F{other.slug}/echo"):
        status_line = await raw_request(client.port, f"GET {base}{rest} HTTP/1.1", plugin.member)  # type: ignore[arg-type]
        assert status_line.split()[1] == b"400", rest


async def test_content_length_with_transfer_encoding_is_400(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                            upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    seen = len(up.seen)
    status_line = await raw_request(
        client.port, f"POST {plugin.path('/echo')} HTTP/1.1",  # type: ignore[arg-type]
        {**plugin.member, "Content-Length": "5", "Transfer-Encoding": "chunked"}, b"0\r\n\r\n")
    assert status_line.split()[1] == b"400"
    assert len(up.seen) == seen


async def test_one_hanging_plugin_does_not_starve_another(database_url: str, make: Factory, db: asyncpg.Pool,
                                                          aiohttp_server: Any) -> None:
    hanging_up, healthy_up = Upstream(), Upstream()
    hanging = str((await aiohttp_server(hanging_up.app)).make_url("")).rstrip("/")
    healthy = str((await aiohttp_server(healthy_up.app)).make_url("")).rstrip("/")
    settings = make_settings(database_url, upstream_pool_per_host=4)
    async with gateway_client(settings) as client:
        stuck = await make_plugin(db, make, hanging)
        fine = await make_plugin(db, make, healthy)
        await until_status(client, fine.path("/echo"), fine.member, 200)
        await until_status(client, stuck.path("/echo"), stuck.member, 200)
        hung = [asyncio.create_task(client.get(stuck.path("/hang"), headers=stuck.member)) for _ in range(20)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get(fine.path("/echo"), headers=fine.member) for _ in range(20)))
        assert all(a.status == 200 for a in answers)
        assert time.monotonic() - started < 2
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)


async def test_too_many_headers_is_refused(client: TestClient, make: Factory, db: asyncpg.Pool,
                                           upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    many = {f"X-Filler-{n}": "x" for n in range(150)}
    status_line = await raw_request(client.port, f"GET {plugin.path('/echo')} HTTP/1.1",  # type: ignore[arg-type]
                                    {**plugin.member, **many})
    assert status_line.split()[1] in (b"400", b"431")
    huge = {"X-Huge": "x" * 10_000}
    status_line = await raw_request(client.port, f"GET {plugin.path('/echo')} HTTP/1.1",  # type: ignore[arg-type]
                                    {**plugin.member, **huge})
    assert status_line.split()[1] in (b"400", b"431")


async def test_compressed_bodies_pass_untouched(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                upstream: tuple[Upstream, str]) -> None:
    import gzip

    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    packed = gzip.compress(b"{}" * 1000)
    response = await client.post(plugin.path("/echo"), data=packed,
                                 headers={**plugin.member, "Content-Encoding": "gzip"})
    assert response.status == 200
    assert up.seen[-1]["size"] == len(packed) and up.seen[-1]["headers"]["Content-Encoding"] == "gzip"


# -- issue 9: no caller can fool the gateway -------------------------------------------------------

CALLER_FORWARDING = {
    "X-Forwarded-For": "198.51.100.66", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/admin", "Forwarded": "for=198.51.100.66;proto=https",
    "X-Real-IP": "198.51.100.66", "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin",
}
NEVER_FORWARDED_FROM_CALLER = {"forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix",
                               "x-original-url", "x-rewrite-url"}


def lowered(headers: dict[str, str]) -> set[str]:
    return {name.lower() for name in headers}


async def test_header_names_with_underscores_are_dropped(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                         upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    sneaky = {"X_Gateway_User_Id": "00000000-0000-0000-0000-000000000000", "X_Gateway_Space_Id": "evil",
              "x_forwarded_for": "198.51.100.66", "X-Api_Key": "caller", "Plain_Header": "1", "X-Kept": "yes"}
    response = await client.get(plugin.path("/echo"), headers={**plugin.member, **sneaky})
    assert response.status == 200
    seen = up.seen[-1]["headers"]
    assert not any("_" in name for name in seen), seen
    assert seen["X-Kept"] == "yes"
    assert seen["X-Gateway-User-Id"] != sneaky["X_Gateway_User_Id"]  # the gateway's own, from the JWT
    assert seen["X-Gateway-Space-Id"] == str(plugin.space_id)
    assert seen["X-Forwarded-For"] == "127.0.0.1"


async def test_caller_forwarding_headers_are_replaced_from_an_untrusted_peer(
        client: TestClient, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """No GATEWAY_TRUSTED_PROXIES (the default): the caller's X-Forwarded-* are the caller's
    invention; the plugin gets the gateway's own values, the peer alone in X-Forwarded-For."""
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    response = await client.get(plugin.path("/echo"), headers={**plugin.member, **CALLER_FORWARDING})
    assert response.status == 200
    seen = up.seen[-1]["headers"]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{client.port}"  # the Host the gateway was called with
    assert not lowered(seen) & NEVER_FORWARDED_FROM_CALLER, seen


async def test_a_trusted_proxy_is_believed(database_url: str, make: Factory, db: asyncpg.Pool,
                                           upstream: tuple[Upstream, str]) -> None:
    """Behind GATEWAY_TRUSTED_PROXIES (here the test client's loopback): its X-Forwarded-For gets
    the peer appended, its -Proto and -Host pass on; the other forwarding headers still never do."""
    up, url = upstream
    settings = make_settings(database_url, trusted_proxies=(ip_network("127.0.0.0/8"),))
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await until_status(client, plugin.path("/echo"), plugin.member, 200)
        sent = {**CALLER_FORWARDING, "X-Forwarded-For": "203.0.113.7, 10.1.2.3",
                "X-Forwarded-Host": "platform.example"}
        response = await client.get(plugin.path("/echo"), headers={**plugin.member, **sent})
        assert response.status == 200
        seen = up.seen[-1]["headers"]
        assert seen["X-Forwarded-For"] == "203.0.113.7, 10.1.2.3, 127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "https" and seen["X-Forwarded-Host"] == "platform.example"
        assert not lowered(seen) & NEVER_FORWARDED_FROM_CALLER, seen

        # A trusted proxy that sent none: the gateway's own values.
        response = await client.get(plugin.path("/echo"), headers=plugin.member)
        assert response.status == 200
        seen = up.seen[-1]["headers"]
        assert seen["X-Forwarded-For"] == "127.0.0.1" and seen["X-Forwarded-Proto"] == "http"
        assert seen["X-Forwarded-Host"] == f"127.0.0.1:{client.port}"


async def test_a_peer_outside_the_trusted_proxies_is_not_believed(database_url: str, make: Factory,
                                                                  db: asyncpg.Pool,
                                                                  upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    settings = make_settings(database_url, trusted_proxies=(ip_network("10.0.0.0/8"), ip_network("::1/128")))
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await until_status(client, plugin.path("/echo"), plugin.member, 200)
        response = await client.get(plugin.path("/echo"), headers={**plugin.member, **CALLER_FORWARDING})
        assert response.status == 200
        seen = up.seen[-1]["headers"]
        assert seen["X-Forwarded-For"] == "127.0.0.1" and seen["X-Forwarded-Proto"] == "http"
        assert seen["X-Forwarded-Host"] == f"127.0.0.1:{client.port}"


@pytest.mark.parametrize("rest", [
    "/files/..;/..;/admin", "/a/..;x/echo", "/.;/echo", "/a/.;x/echo", "/a/%2e%2e;/echo", "/a/%2E%2E;x/echo",
    "/a/.%2e;/echo", "/a/%2e;/echo", "/a/..%3b/echo", "/a/..%3Bjsessionid=1/echo", "/a/%252e%252e/echo",
    "/a/%252e%252e;/echo",
])
async def test_dot_segments_behind_a_path_parameter_are_refused(client: TestClient, make: Factory,
                                                                db: asyncpg.Pool, upstream: tuple[Upstream, str],
                                                                rest: str) -> None:
    """Tomcat-style servers drop `;...` from a segment, then resolve `..;` as `..`."""
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    seen = len(up.seen)
    status_line = await raw_request(client.port, f"GET {plugin.path(rest)} HTTP/1.1", plugin.member)  # type: ignore[arg-type]
    assert status_line.split()[1] == b"400", rest
    assert len(up.seen) == seen


async def test_path_parameters_and_dots_that_do_not_climb_pass(client: TestClient, make: Factory,
                                                               db: asyncpg.Pool,
                                                               upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    for rest in ("/hostile;v=1", "/.../x", "/a..;/x", "/x;../y", "/.well-known/x", "/a%25/b"):
        status_line = await raw_request(client.port, f"GET {plugin.path(rest)} HTTP/1.1", plugin.member)  # type: ignore[arg-type]
        assert status_line.split()[1] != b"400", rest  # the upstream's own 404: it was reached


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
async def test_trace_track_and_connect_never_reach_a_plugin(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                            upstream: tuple[Upstream, str], method: str) -> None:
    """A `*` route takes any method but these. TRACE reaches the route stage (405 with Allow);
    aiohttp's HTTP parser refuses TRACK outright (400) and routes CONNECT's authority-form
    target nowhere (404): none of the three is passed on."""
    up, url = upstream
    plugin = await make_plugin(db, make, url)
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    seen = len(up.seen)
    response = await client.request(method, plugin.path("/echo"), headers=plugin.member)
    body = await response.read()
    if method == "TRACE":
        assert response.status == 405
        assert response.headers["Content-Type"] == "application/problem+json" and problem(body)["status"] == 405
        assert response.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    else:
        assert response.status in (400, 404, 405), (method, response.status)
    assert len(up.seen) == seen


async def test_trace_on_a_route_that_names_it_is_405_and_not_allowed(client: TestClient, make: Factory,
                                                                     db: asyncpg.Pool,
                                                                     upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/echo", "/echo", method="GET")
    await add_route(db, plugin.service_id, "/echo", "/echo", method="TRACE")
    await until_status(client, plugin.path("/echo"), plugin.member, 200)
    response = await client.request("TRACE", plugin.path("/echo"), headers=plugin.member)
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"
    response = await client.post(plugin.path("/echo"), headers=plugin.member)
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"  # TRACE never listed
    assert (await client.request("TRACE", plugin.path("/nothing"), headers=plugin.member)).status == 404
    assert all(seen["path"] == "/echo" for seen in up.seen)
    assert len(up.seen) == 1


@pytest.mark.parametrize("status", [200, 401])
async def test_plugin_response_headers_the_platform_owns_are_filtered(client: TestClient, make: Factory,
                                                                      db: asyncpg.Pool,
                                                                      upstream: tuple[Upstream, str],
                                                                      status: int) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url)
    response = await until_status(client, plugin.path(f"/hostile?cookie=1&status={status}"), plugin.member, status)
    assert response.headers["X-Plugin-Fine"] == "1"
    assert not lowered(dict(response.headers)) & NEVER_RETURNED, response.headers


async def test_a_cache_miss_filters_the_plugin_headers(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                       upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/hostile", "/hostile", method="GET", cache_enabled=True, cache_ttl=60)
    miss = await until_status(client, plugin.path("/hostile"), plugin.member, 200)
    assert miss.headers["X-Cache-Status"] == "MISS" and miss.headers["X-Plugin-Fine"] == "1"
    assert not lowered(dict(miss.headers)) & NEVER_RETURNED, miss.headers


async def test_a_cache_hit_filters_the_plugin_headers(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                      upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    plugin = await make_plugin(db, make, url, routes={})
    await add_route(db, plugin.service_id, "/hostile", "/hostile", method="GET", cache_enabled=True, cache_ttl=60)
    await until_status(client, plugin.path("/hostile"), plugin.member, 200)
    calls = len(up.seen)
    hit = await client.get(plugin.path("/hostile"), headers=plugin.member)
    await hit.read()
    assert hit.headers["X-Cache-Status"] == "HIT" and len(up.seen) == calls
    assert hit.headers["X-Plugin-Fine"] == "1"
    assert not lowered(dict(hit.headers)) & NEVER_RETURNED, hit.headers
