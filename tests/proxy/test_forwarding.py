"""What crosses the proxy and how: streaming, limits, timeouts, failures, hygiene."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.dev import services as devservices
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import make_plugin, problem, raw_request, until_status


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

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"headers": dict(request.headers), "size": len(body), "path": request.raw_path})
        return web.json_response({"size": len(body)})

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
