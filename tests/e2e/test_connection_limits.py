"""What one caller connection may take from a real `gateway serve`: the header deadline
(GATEWAY_CLIENT_HEADER_TIMEOUT, from accept and from the end of the previous response) and the
connection cap (GATEWAY_MAX_CONNECTIONS). Time bounds are generous; bench/ has the figures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from tests.e2e.conftest import Gateway, StartGateway
from tests.factories import Factory
from tests.plugins import make_plugin, until_status

HALF_A_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow"  # never finished


async def serving(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        await until_status(session, f"{gateway.url}/healthz", {}, 200, within=30)  # type: ignore[arg-type]


async def closed_after(reader: asyncio.StreamReader, started: float, within: float) -> float:
    """Seconds from `started` until the gateway closed the connection (EOF or reset)."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - started


async def answered_once(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """A kept-alive connection whose first request has been answered, and when that ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return reader, writer, time.monotonic()


async def test_150_half_open_connections_are_closed_at_the_header_deadline_while_calls_are_served(
        start_gateway: StartGateway) -> None:
    gateway = await start_gateway(1, GATEWAY_CLIENT_HEADER_TIMEOUT="2")
    await serving(gateway)
    connections = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(150)]
    opened = time.monotonic()
    for _, writer in connections:
        writer.write(HALF_A_REQUEST)
    try:
        async with aiohttp.ClientSession() as session:  # others are served meanwhile
            async with session.get(f"{gateway.url}/healthz") as response:
                assert response.status == 200
            assert time.monotonic() - opened < 1.5
        closed = await asyncio.gather(*(closed_after(reader, opened, 15) for reader, _ in connections))
    finally:
        for _, writer in connections:
            writer.close()
    assert min(closed) > 1.5, min(closed)  # not before the deadline
    assert max(closed) < 6.0, max(closed)  # every one of them at it, give or take a slow machine


async def test_a_kept_alive_connection_gets_the_deadline_again_from_the_end_of_each_response(
        start_gateway: StartGateway) -> None:
    gateway = await start_gateway(1, GATEWAY_CLIENT_HEADER_TIMEOUT="2")
    await serving(gateway)
    reader, writer, answered = await answered_once(gateway.port)
    try:
        await asyncio.sleep(1.2)  # past half the deadline, then a request that never finishes
        writer.write(HALF_A_REQUEST)
        seconds = await closed_after(reader, answered, 15)
    finally:
        writer.close()
    assert 1.5 < seconds < 6.0, seconds

    reader, writer, answered = await answered_once(gateway.port)  # idle, saying nothing
    try:
        seconds = await closed_after(reader, answered, 15)
    finally:
        writer.close()
    assert 1.5 < seconds < 6.0, seconds


async def test_the_header_deadline_does_not_cut_a_request_whose_headers_arrived(
        start_gateway: StartGateway, db: asyncpg.Pool, make: Factory, aiohttp_server: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({"slow": True})

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", slow)
    server = await aiohttp_server(upstream)
    plugin = await make_plugin(db, make, str(server.make_url("")).rstrip("/"))
    gateway = await start_gateway(1, GATEWAY_CLIENT_HEADER_TIMEOUT="1")
    await serving(gateway)
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        async with session.get(plugin.path("/slow"), headers=plugin.member,
                               timeout=aiohttp.ClientTimeout(total=30)) as response:
            assert response.status == 200
            assert await response.json() == {"slow": True}


async def test_connections_beyond_the_cap_are_closed_at_once(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(1, GATEWAY_MAX_CONNECTIONS="20")
    await serving(gateway)
    await asyncio.sleep(0.5)  # the probe's own connections are closed
    held = [await answered_once(gateway.port) for _ in range(20)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert await closed_after(reader, started, 5) < 2.0  # refused: nothing is answered
        writer.close()

        for _, held_writer, _ in held[:5]:  # room again once some go
            held_writer.close()
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway.url}/healthz") as response:
                assert response.status == 200
        for held_reader, held_writer, _ in held[5:]:  # the ones held meanwhile still work
            held_writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert (await asyncio.wait_for(held_reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    finally:
        for _, held_writer, _ in held:
            held_writer.close()


async def test_a_message_the_http_parser_refuses_answers_problem_json_without_echoing_it(
        start_gateway: StartGateway) -> None:
    # schemathesis found the overlong URL: aiohttp's own answer was text/plain, repeating the
    # caller's bytes, after a traceback in the log.
    gateway = await start_gateway(1)
    await serving(gateway)
    messages = {
        b"GET /api/v1/services?limit=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: g\r\n\r\n": "longer than 8190 bytes",
        b"GET /healthz HTTP/1.1\r\nHost: g\r\nX-A: " + b"y" * 9000 + b"\r\n\r\n": "longer than 8190 bytes",
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n": "more than 100 headers",
        b"GET /healthz HTTP/1.1\r\nHost: g\r\nBad Name: zz\r\n\r\n": "not valid HTTP/1.1",
    }
    for message, detail in messages.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(message)
            answer = await asyncio.wait_for(reader.read(), 10)  # then the connection is closed
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400"), head
        assert b"content-type: application/problem+json" in head.lower(), head
        problem = orjson.loads(body)
        assert problem["status"] == 400 and detail in problem["detail"], problem
        assert b"xxxx" not in body and b"yyyy" not in body and b"zz" not in body
    assert "Traceback" not in gateway.output() and "refused a malformed request" in gateway.output()
