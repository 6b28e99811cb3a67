"""The floor any aiohttp gateway stands on: a reverse proxy with no checks at all.

    python bench/bare_proxy.py --port 8081 --upstream http://127.0.0.1:8080

One process, one event loop (uvloop when installed, like `gateway serve`), one
`ClientSession` whose connector and options are the gateway's (keep-alive pool of 64 per host,
no cookie jar, nothing decompressed, no automatic request headers). Every request goes to the
same path on the upstream; the answer is streamed back chunk by chunk, exactly as the gateway's
`forward` stage does, minus everything the gateway adds: no authentication, no authorization,
no route table, no header filtering, no credentials, no assertion, no request id.

Whatever the gateway costs above this process is the price of its own pipeline.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web
from yarl import URL

CHUNK = 64 * 1024
PASSED_BACK = ("Content-Type",)


def build_app(upstream: str, pool_per_host: int) -> web.Application:
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=pool_per_host, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        yield
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        target = URL(base + request.raw_path, encoded=True)  # as written, like the gateway
        async with session.request(request.method, target, allow_redirects=False,
                                   data=request.content if request.body_exists else None) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name in PASSED_BACK:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--pool-per-host", type=int, default=64)
    parser.add_argument("--reuse-port", action="store_true",
                        help="listen with SO_REUSEPORT, so that several of these processes share the port")
    args = parser.parse_args()
    import uvloop  # as the gateway's workers run (aiohttp.GunicornUVLoopWebWorker)

    web.run_app(build_app(args.upstream, args.pool_per_host), host=args.host, port=args.port,
                access_log=None, loop=uvloop.new_event_loop(), reuse_port=args.reuse_port,
                print=lambda _: print(f"bare proxy listening on {args.port}", flush=True))


if __name__ == "__main__":
    main()
