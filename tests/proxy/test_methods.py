"""TRACE, TRACK and CONNECT at the route stage (contract revision 3): 405, `*` routes included,
with `Allow` listing what the path's routes allow (never one of the three). Pure, no database:
the route stage is given a table, an installation and a request."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.errors import MethodNotAllowed, NotFound
from gateway.proxy.context import ProxyContext
from gateway.proxy.stages import REFUSED_METHODS, route
from routing.table import STANDARD_METHODS, NoRoute, Route, RouteTable

SERVICE, INSTALL, OTHER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def make_route(path: str, method: str, installation: UUID | None = None) -> Route:
    return Route(id=uuid.uuid4(), service_id=SERVICE, service_slug="files", installation_id=installation,
                 route_path=path, method=method, target_url=f"https://up.example{path}")


def context(table: RouteTable, method: str, path: str) -> ProxyContext:
    state: Any = SimpleNamespace(table=table)
    ctx = ProxyContext(make_mocked_request(method, f"/spaces/{uuid.uuid4()}/plugins/files{path}"),
                       state, uuid.uuid4(), "files", path)
    ctx.installation = SimpleNamespace(id=INSTALL)  # type: ignore[assignment]
    return ctx


async def refused(table: RouteTable, method: str, path: str) -> str:
    with pytest.raises(MethodNotAllowed) as caught:
        await route(context(table, method, path))
    return caught.value.headers["Allow"]


ANY = RouteTable.build([make_route("/{rest:path}", "*")])


@pytest.mark.parametrize("method", sorted(REFUSED_METHODS) + ["trace", "Track", "connect"])
async def test_any_method_routes_refuse_them(method: str) -> None:
    assert await refused(ANY, method, "/a/b") == ", ".join(sorted(STANDARD_METHODS))


async def test_other_methods_still_match_a_star_route() -> None:
    ctx = context(ANY, "PROPFIND", "/a")
    await route(ctx)
    assert ctx.match is not None and ctx.match.route.method == "*"


async def test_allow_lists_the_path_routes_and_never_the_refused_methods() -> None:
    table = RouteTable.build([
        make_route("/files/{name}", "GET"), make_route("/files/{name}", "TRACE"),
        make_route("/files/{rest:path}", "PUT"), make_route("/files/{name}", "DELETE", installation=INSTALL),
        make_route("/files/{name}", "POST", installation=OTHER),  # another installation's: invisible
    ])
    assert await refused(table, "TRACE", "/files/x") == "DELETE, GET, HEAD, PUT"
    assert await refused(table, "CONNECT", "/files/x") == "DELETE, GET, HEAD, PUT"
    assert await refused(table, "PATCH", "/files/x") == "DELETE, GET, HEAD, PUT"  # TRACE is not listed


async def test_a_route_of_the_refused_method_alone_allows_nothing() -> None:
    table = RouteTable.build([make_route("/echo", "TRACE")])
    assert await refused(table, "TRACE", "/echo") == ""


async def test_no_matching_path_is_still_404() -> None:
    table = RouteTable.build([make_route("/echo", "GET"), make_route("/mine", "GET", installation=OTHER)])
    for path in ("/nothing", "/mine"):
        with pytest.raises(NotFound):
            await route(context(table, "TRACE", path))


def test_table_allowed() -> None:
    table = RouteTable.build([make_route("/a/{x}", "GET"), make_route("/a/{rest:path}", "*"),
                              make_route("/b", "POST", installation=OTHER)])
    assert table.allowed("files", INSTALL, "/a/1") == tuple(sorted(STANDARD_METHODS))
    assert table.allowed("files", INSTALL, "/a/1/2") == tuple(sorted(STANDARD_METHODS))
    with pytest.raises(NoRoute):
        table.allowed("files", INSTALL, "/b")
    with pytest.raises(NoRoute):
        table.allowed("nobody", INSTALL, "/a/1")
