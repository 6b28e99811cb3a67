"""A 1 GiB upload and a 1 GiB download pass through the proxy with flat memory.

The caller, the gateway and the upstream share this process, so the resident set measured here
bounds what the gateway holds: were any hop to buffer the body, it would grow by a gigabyte.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.factories import Factory
from tests.plugins import make_plugin, until_status

GIB = 1024**3
CHUNK = 1024 * 1024
ALLOWED_GROWTH = 64 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    def __init__(self) -> None:
        self.peak = rss()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        self._task.cancel()
        return max(self.peak, rss())


async def test_one_gib_each_way_with_flat_memory(client: TestClient, make: Factory, db: asyncpg.Pool,
                                                 aiohttp_server: Any) -> None:
    block = b"\0" * CHUNK

    async def sink(request: web.Request) -> web.Response:
        received = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            received += len(chunk)
        return web.json_response({"received": received})

    async def source(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = GIB
        await response.prepare(request)
        for _ in range(GIB // CHUNK):
            await response.write(block)
        return response

    app = web.Application()
    app.router.add_put("/sink", sink)
    app.router.add_get("/source", source)
    server: TestServer = await aiohttp_server(app)
    plugin = await make_plugin(db, make, str(server.make_url("")).rstrip("/"))
    await until_status(client, plugin.path("/sink"), plugin.member, 200, method="PUT")

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(GIB // CHUNK):
            yield block

    baseline = rss()
    sampler = Sampler()
    response = await client.put(plugin.path("/sink"), headers=plugin.member, data=upload())
    assert response.status == 200 and (await response.json())["received"] == GIB

    downloaded = 0
    async with client.get(plugin.path("/source"), headers=plugin.member) as response:
        assert response.status == 200 and response.content_length == GIB
        async for chunk in response.content.iter_chunked(CHUNK):
            downloaded += len(chunk)
    assert downloaded == GIB
    growth = sampler.stop() - baseline
    assert growth < ALLOWED_GROWTH, f"resident memory grew by {growth / 2**20:.0f} MiB"
