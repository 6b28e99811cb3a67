"""GATEWAY_REDIS_TIMEOUT counts the time Redis takes, not the time this process's own event loop
is busy before it reads an answer that has arrived (gateway.redis_link.answer_within)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.redis_link import answer_within


@pytest.fixture
def answering_server() -> Iterator[int]:
    """A loopback server in a thread of its own (so it answers while our loop is blocked): one
    byte back for each byte read, at once; `b"s"` is never answered."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(1):
                    if data != b"s":
                        conn.sendall(b"y")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(timeout=5)


async def test_a_busy_loop_does_not_use_up_the_timeout(answering_server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", answering_server)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):
            async with answer_within(0.05):
                writer.write(b"x")
                loop.call_soon(time.sleep, 0.3)  # the loop busy for six timeouts, the answer in
                assert await reader.read(1) == b"y"
    finally:
        writer.close()


async def test_a_silent_server_still_times_out_in_about_the_timeout(answering_server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", answering_server)
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with answer_within(0.05):
                writer.write(b"s")
                await reader.read(1)
        assert 0.05 <= time.perf_counter() - started < 0.2
    finally:
        writer.close()
