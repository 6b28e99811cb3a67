"""A caller's request body must keep coming: a gap longer than the body timeout, or less than the
minimum rate over 10 s, aborts the upstream call (its connection closed, its pool slot freed)
and answers 408 problem+json, then closes the caller's connection.

The min-rate cases take ~10-12 s: the contract's window is 10 s, and it is not a setting.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any, Self

import asyncpg
import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway import metrics
from gateway.proxy.forward import RATE_WINDOW, BodyPace, _BodyTooSlow
from tests.conftest import gateway_client, make_settings
from tests.factories import Factory
from tests.plugins import Plugin, make_plugin, until_status


class Upstream:
    """/upload reads the whole body; how each read ended is recorded."""

    def __init__(self) -> None:
        self.completed: list[int] = []
        self.broken = asyncio.Event()
        self.app = web.Application(client_max_size=1024**3)
        self.app.router.add_post("/upload", self.upload)
        self.app.router.add_get("/fast", self.fast)
        self.app.router.add_post("/answer-first", self.answer_first)
        self.stream_cut = asyncio.Event()

    async def upload(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except BaseException:  # the gateway closed the connection mid-body (a cancellation, or an error)
            self.broken.set()
            raise
        self.completed.append(len(body))
        return web.json_response({"size": len(body)})

    async def fast(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def answer_first(self, request: web.Request) -> web.StreamResponse:
        """Streams an answer for 5 s without reading the body (a plugin may answer early)."""
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(50):
                await response.write(b"a" * 100)
                await asyncio.sleep(0.1)
        except BaseException:
            self.stream_cut.set()
            raise
        return response


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    up = Upstream()
    server = await aiohttp_server(up.app)
    return up, str(server.make_url("")).rstrip("/")


class SlowCaller:
    """A caller on a raw socket, sending its body as slowly as it likes."""

    def __init__(self, port: int, path: URL, headers: dict[str, str], length: int) -> None:
        self.port, self.path, self.headers, self.length = port, path, headers, length

    async def __aenter__(self) -> Self:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = {"Host": "gateway", "Content-Length": str(self.length), **self.headers}
        self.writer.write(f"POST {self.path} HTTP/1.1\r\n".encode()
                          + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n")
        await self.writer.drain()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, within: float) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), headers, body

    async def closed_by_gateway(self, within: float = 2.0) -> bool:
        """Whether the gateway closes the connection (the end of the stream) within `within` s."""
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except (TimeoutError, ConnectionError):
            return False


def aborted(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("gateway_client_body_aborted_total", {"reason": reason}) or 0.0


async def ready(client: Any, plugin: Plugin) -> None:
    await until_status(client, plugin.path("/fast"), plugin.member, 200)


async def test_a_body_that_stalls_gets_408_and_frees_its_upstream_connection(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    # A pool of one: the call after the stalled one only passes if the slot was given back.
    settings = make_settings(database_url, upstream_pool_per_host=1, client_body_timeout=0.5,
                             client_body_min_rate=0, upstream_pool_timeout=2)
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await ready(client, plugin)
        before = aborted("timeout")
        async with SlowCaller(client.port, plugin.path("/upload"), plugin.member, 1000) as caller:  # type: ignore[arg-type]
            started = time.monotonic()
            await caller.send(b"x" * 100)
            status, headers, body = await caller.answer(within=5)
            seconds = time.monotonic() - started
            closed = await caller.closed_by_gateway()
        assert status == 408 and 0.4 < seconds < 3
        assert headers["content-type"] == "application/problem+json"
        problem = orjson.loads(body)
        assert problem["status"] == 408 and problem["title"] == "Request Timeout"
        assert problem["type"].endswith("/request-timeout") and problem["request_id"]
        assert closed  # the rest of the body is not waited for
        await asyncio.wait_for(up.broken.wait(), 5)  # the upstream saw its connection close
        assert up.completed == []
        assert aborted("timeout") == before + 1
        started = time.monotonic()
        after = await client.post(plugin.path("/upload"), headers=plugin.member, data=b"y" * 10)
        assert after.status == 200 and time.monotonic() - started < 1.5  # the slot is free


async def test_a_body_that_stalls_while_the_answer_streams_cuts_both_connections(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """Headers are gone already, so no 408: the upstream call is aborted and the caller's
    connection cut before the answer's end, so it cannot take a truncated answer for a whole one."""
    up, url = upstream
    settings = make_settings(database_url, client_body_timeout=0.5, client_body_min_rate=0)
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await ready(client, plugin)
        before = aborted("timeout")
        async with SlowCaller(client.port, plugin.path("/answer-first"), plugin.member, 1000) as caller:  # type: ignore[arg-type]
            started = time.monotonic()
            await caller.send(b"x" * 100)
            head = await asyncio.wait_for(caller.reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            received = b""
            while chunk := await asyncio.wait_for(caller.reader.read(65536), 5):
                received += chunk
            seconds = time.monotonic() - started
        assert seconds < 3  # cut about the body timeout after the stall, not after the 5 s answer
        assert not received.endswith(b"0\r\n\r\n")  # the chunked answer never ended
        await asyncio.wait_for(up.stream_cut.wait(), 5)
        assert aborted("timeout") == before + 1


async def test_gaps_shorter_than_the_timeout_pass(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    settings = make_settings(database_url, client_body_timeout=1.0, client_body_min_rate=0)
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await ready(client, plugin)
        async with SlowCaller(client.port, plugin.path("/upload"), plugin.member, 500) as caller:  # type: ignore[arg-type]
            for _ in range(5):
                await caller.send(b"z" * 100)
                await asyncio.sleep(0.4)
            status, _, body = await caller.answer(within=5)
        assert status == 200 and orjson.loads(body) == {"size": 500}
        assert up.completed == [500]


async def test_a_body_under_the_minimum_rate_gets_408_and_a_steady_one_passes(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    """Min rate 1024 B/s: a trickle of 20 B every 0.25 s (80 B/s, never a long gap) is cut at the
    end of the first 10 s; a body sent at ~2 KiB/s for 12 s passes. Both run side by side."""
    up, url = upstream
    settings = make_settings(database_url, client_body_timeout=5, client_body_min_rate=1024)
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await ready(client, plugin)
        before = aborted("min_rate")

        async def trickle() -> tuple[int, float, bool]:
            async with SlowCaller(client.port, plugin.path("/upload"), plugin.member, 100_000) as caller:  # type: ignore[arg-type]
                started = time.monotonic()
                answer = asyncio.create_task(caller.answer(within=30))
                while not answer.done():
                    try:
                        await caller.send(b"t" * 20)
                    except ConnectionError:
                        break
                    await asyncio.wait([answer], timeout=0.25)
                status, _, _ = await answer
                return status, time.monotonic() - started, await caller.closed_by_gateway()

        async def steady() -> int:
            size = 12 * 8 * 256
            async with SlowCaller(client.port, plugin.path("/upload"), plugin.member, size) as caller:  # type: ignore[arg-type]
                for _ in range(12 * 8):
                    await caller.send(b"s" * 256)  # 2 KiB/s in eighths of a second
                    await asyncio.sleep(0.125)
                status, _, body = await caller.answer(within=10)
                assert orjson.loads(body) == {"size": size}
                return status

        (status, seconds, closed), steady_status = await asyncio.gather(trickle(), steady())
        assert status == 408 and closed
        assert RATE_WINDOW - 0.5 < seconds < RATE_WINDOW + 4
        assert steady_status == 200
        assert aborted("min_rate") == before + 1
        await asyncio.wait_for(up.broken.wait(), 5)


async def test_a_normal_upload_passes_with_the_deadlines_on(
        database_url: str, make: Factory, db: asyncpg.Pool, upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    settings = make_settings(database_url, client_body_timeout=0.5, client_body_min_rate=1024,
                             proxy_max_body_bytes=8_000_000)
    async with gateway_client(settings) as client:
        plugin = await make_plugin(db, make, url)
        await ready(client, plugin)
        response = await client.post(plugin.path("/upload"), headers=plugin.member,
                                     data=io.BytesIO(b"u" * 5_000_000))
        assert response.status == 200 and (await response.json()) == {"size": 5_000_000}

        async def chunks() -> Any:  # chunked, no Content-Length
            for _ in range(10):
                yield b"c" * 100_000
                await asyncio.sleep(0.05)

        response = await client.post(plugin.path("/upload"), headers=plugin.member, data=chunks())
        assert response.status == 200 and (await response.json()) == {"size": 1_000_000}
        too_big = await client.post(plugin.path("/upload"), headers=plugin.member,
                                    data=io.BytesIO(b"u" * 8_000_001))
        assert too_big.status == 413  # the size limit still answers first


# BodyPace on its own: the arithmetic of the deadlines, in caller time.

def test_pace_gap_is_the_allowance_while_the_rate_is_not_judged() -> None:
    pace = BodyPace(gap=30, min_rate=1024)
    assert pace.allowance() == (RATE_WINDOW, "min_rate")  # nothing yet: judged at 10 s
    pace.arrived(20 * 1024, waited=1.0)  # two windows' worth at once, at 1 s...
    assert pace.allowance() == (RATE_WINDOW, "min_rate")  # ...count for the windows holding 1 s only
    short_gap = BodyPace(gap=5, min_rate=1024)
    short_gap.arrived(20 * 1024, waited=1.0)
    assert short_gap.allowance() == (5, "timeout")
    off = BodyPace(gap=2, min_rate=0)
    off.arrived(1, waited=1.9)
    assert off.allowance() == (2, "timeout")


def test_pace_rate_deadline_follows_the_sliding_window() -> None:
    pace = BodyPace(gap=100, min_rate=100)  # 1000 bytes per 10 s
    pace.arrived(600, waited=1.0)  # at 1 s
    pace.arrived(600, waited=4.0)  # at 5 s: 1200 bytes
    # With nothing more, the window (t-10, t] still holds ≥ 1000 bytes while it holds the
    # 600 of t=1 s: the rate fails at 11 s, 6 s from now.
    allowance, reason = pace.allowance()
    assert reason == "min_rate" and abs(allowance - 6.0) < 0.11
    pace.arrived(500, waited=5.5)  # at 10.5 s: the window (0.5, 10.5] holds 1700
    allowance, reason = pace.allowance()  # the 600 of 5 s and the 500 suffice until 15 s
    assert reason == "min_rate" and abs(allowance - 4.5) < 0.11


def test_pace_raises_when_bytes_come_after_the_rate_deadline() -> None:
    pace = BodyPace(gap=100, min_rate=100)
    with pytest.raises(_BodyTooSlow) as caught:
        pace.arrived(10, waited=10.5)  # too little, too late: the first window is over
    assert caught.value.reason == "min_rate"


def test_pace_keeps_a_bounded_record_of_a_byte_by_byte_trickle() -> None:
    pace = BodyPace(gap=100, min_rate=1)  # 10 bytes per 10 s
    for _ in range(100_000):
        pace.arrived(1, waited=0.001)
    assert len(pace._marks) <= RATE_WINDOW / 0.1 + 2
