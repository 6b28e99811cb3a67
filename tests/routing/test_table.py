"""The route table: template precedence, scopes, methods, upstream URLs. Pure, no database."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import pytest

from routing.table import (
    STANDARD_METHODS, Match, MethodNotAllowed, NoRoute, Route, RouteTable, TemplateError,
    join_target,
)

SERVICE = uuid.uuid4()
INSTALL = uuid.uuid4()
OTHER_INSTALL = uuid.uuid4()
BASE = "https://up.example"


def route(path: str, method: str = "GET", *, target: str | None = None,
          installation: UUID | None = None, slug: str = "reports",
          service: UUID = SERVICE, **extra: Any) -> Route:
    return Route(
        id=uuid.uuid4(), service_id=service, service_slug=slug, installation_id=installation,
        route_path=path, method=method, target_url=target or BASE + path, **extra,
    )


def match(table: RouteTable, path: str, method: str = "GET", *,
          installation: UUID | None = INSTALL, slug: str = "reports") -> Match:
    return table.match(slug, installation, method, path)


# --- precedence -----------------------------------------------------------------------------

def test_static_beats_param_beats_rest() -> None:
    static, param, rest = route("/a/b"), route("/a/{p}"), route("/a/{rest:path}")
    table = RouteTable.build([rest, param, static])
    assert match(table, "/a/b").route is static
    assert match(table, "/a/c").route is param
    assert match(table, "/a/c").params == {"p": "c"}
    assert match(table, "/a/c/d").route is rest
    assert match(table, "/a/c/d").params == {"rest": "c/d"}


def test_backtracks_from_a_static_branch_that_dead_ends() -> None:
    dead_end, wanted = route("/a/b/x"), route("/a/{p}/c")
    table = RouteTable.build([dead_end, wanted])
    found = match(table, "/a/b/c")
    assert found.route is wanted
    assert found.params == {"p": "b"}


def test_backtracks_to_rest_when_param_branch_dead_ends() -> None:
    deep, rest = route("/a/{p}/x"), route("/{all:path}")
    table = RouteTable.build([deep, rest])
    assert match(table, "/a/b/y").route is rest
    assert match(table, "/a/b/y").params == {"all": "a/b/y"}


def test_specificity_is_segment_by_segment() -> None:
    # The first segment decides: static "a" beats {p} even though {p}/b/c is static afterwards.
    early_static, late_static = route("/a/{q}/{r}"), route("/{p}/b/c")
    table = RouteTable.build([early_static, late_static])
    assert match(table, "/a/b/c").route is early_static


def test_a_template_without_the_method_lets_a_less_specific_one_answer() -> None:
    static_post, param_get = route("/a/b", "POST"), route("/a/{p}", "GET")
    table = RouteTable.build([static_post, param_get])
    assert match(table, "/a/b", "GET").route is param_get
    assert match(table, "/a/b", "POST").route is static_post


def test_root_template() -> None:
    root, other = route("/"), route("/x")
    table = RouteTable.build([root, other])
    assert match(table, "/").route is root
    assert match(table, "").route is root
    assert match(table, "/x").route is other
    with pytest.raises(NoRoute):
        match(table, "/y")


def test_rest_captures_several_segments_raw_but_never_the_empty_remainder() -> None:
    files = route("/files/{rest:path}", target=BASE + "/store/{rest}")
    table = RouteTable.build([files])
    found = match(table, "/files/a/b%20c/d.txt")
    assert found.params == {"rest": "a/b%20c/d.txt"}
    assert found.upstream_url("") == BASE + "/store/a/b%20c/d.txt"
    assert match(table, "/files/a/").params == {"rest": "a/"}  # a trailing slash is kept
    for path in ("/files", "/files/", "/files//a"):
        with pytest.raises(NoRoute):
            match(table, path)


def test_trailing_slash_and_empty_segments_are_part_of_the_path() -> None:
    table = RouteTable.build([route("/a"), route("/b/{id}")])
    for path in ("/a/", "//a", "/b/", "/b//", "/b//x"):
        with pytest.raises(NoRoute):
            match(table, path)


def test_paths_the_gateway_should_have_refused_match_nothing() -> None:
    table = RouteTable.build([route("/{a}/{b}"), route("/{rest:path}")])
    for path in ("/x/..", "/./x", "/x/%2E%2e", "x/y", "/x?y=1", "/x#y"):
        with pytest.raises(NoRoute):
            match(table, path)


# --- scopes --------------------------------------------------------------------------------

def test_installation_route_beats_service_route_on_same_template_and_method() -> None:
    service_wide = route("/r/{id}")
    own = route("/r/{id}", installation=INSTALL)
    table = RouteTable.build([own, service_wide])
    assert match(table, "/r/1").route is own
    assert match(table, "/r/1", installation=OTHER_INSTALL).route is service_wide
    assert match(table, "/r/1", installation=None).route is service_wide


def test_another_installations_routes_are_invisible() -> None:
    theirs = route("/secret", installation=OTHER_INSTALL)
    theirs_post = route("/r", "POST", installation=OTHER_INSTALL)
    table = RouteTable.build([theirs, theirs_post, route("/r", "GET")])
    with pytest.raises(NoRoute):
        match(table, "/secret")
    assert match(table, "/secret", installation=OTHER_INSTALL).route is theirs
    with pytest.raises(MethodNotAllowed) as caught:
        match(table, "/r", "POST")
    assert caught.value.allowed == ("GET", "HEAD")


def test_more_specific_template_wins_over_installation_scope() -> None:
    service_static = route("/a/b")
    own_param = route("/a/{p}", installation=INSTALL)
    table = RouteTable.build([service_static, own_param])
    assert match(table, "/a/b").route is service_static
    assert match(table, "/a/c").route is own_param


def test_unknown_slug_is_no_route() -> None:
    table = RouteTable.build([route("/")])
    with pytest.raises(NoRoute):
        match(table, "/", slug="nope")
    with pytest.raises(NoRoute):
        RouteTable.empty().match("reports", None, "GET", "/")


# --- methods -------------------------------------------------------------------------------

def test_exact_method_beats_any_method_on_the_same_template() -> None:
    anything, get = route("/r", "*"), route("/r", "GET")
    table = RouteTable.build([anything, get])
    assert match(table, "/r", "GET").route is get
    assert match(table, "/r", "DELETE").route is anything
    assert match(table, "/r", "PROPFIND").route is anything


def test_exact_service_method_beats_installation_any_method() -> None:
    service_get, own_any = route("/r", "GET"), route("/r", "*", installation=INSTALL)
    table = RouteTable.build([service_get, own_any])
    assert match(table, "/r", "GET").route is service_get
    assert match(table, "/r", "PUT").route is own_any


def test_head_falls_back_to_get_only_without_head_or_any() -> None:
    get = route("/r", "GET")
    assert match(RouteTable.build([get]), "/r", "HEAD").route is get
    head = route("/r", "HEAD")
    assert match(RouteTable.build([get, head]), "/r", "HEAD").route is head
    anything = route("/r", "*")
    assert match(RouteTable.build([get, anything]), "/r", "HEAD").route is anything
    # Per template: a GET on the more specific template answers HEAD before a HEAD elsewhere.
    specific_get, general_head = route("/a/b", "GET"), route("/a/{p}", "HEAD")
    table = RouteTable.build([specific_get, general_head])
    assert match(table, "/a/b", "HEAD").route is specific_get


def test_405_allow_lists_methods_of_every_matching_template() -> None:
    table = RouteTable.build([
        route("/a/b", "POST"),
        route("/a/{p}", "PUT"),
        route("/a/{p}", "DELETE", installation=INSTALL),
        route("/{rest:path}", "PATCH"),
        route("/a/b", "OPTIONS", installation=OTHER_INSTALL),  # invisible
        route("/x/y", "GET"),  # does not match the path
    ])
    with pytest.raises(MethodNotAllowed) as caught:
        match(table, "/a/b", "GET")
    assert caught.value.allowed == ("DELETE", "PATCH", "POST", "PUT")


def test_405_allow_adds_head_for_get_and_ignores_invisible_any() -> None:
    their_any = route("/r", "*", installation=OTHER_INSTALL)
    with pytest.raises(MethodNotAllowed) as caught:
        match(RouteTable.build([their_any, route("/{p}", "GET")]), "/r", "POST")
    assert caught.value.allowed == ("GET", "HEAD")


def test_any_method_route_takes_every_method_so_never_405s() -> None:
    table = RouteTable.build([route("/r", "*"), route("/r", "GET")])
    for method in (*STANDARD_METHODS, "PROPFIND", "TRACE"):
        assert match(table, "/r", method).route.route_path == "/r"


# --- upstream URLs ----------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "query", "expected"), [
    (BASE + "/r/{id}", "", BASE + "/r/7%2F"),
    (BASE + "/r/{id}", "b=2&c=%20", BASE + "/r/7%2F?b=2&c=%20"),
    (BASE + "/r/{id}?a=1", "b=2", BASE + "/r/7%2F?a=1&b=2"),
    (BASE + "/r/{id}?a=1", "", BASE + "/r/7%2F?a=1"),
    (BASE + "/r/{id}?", "b=2", BASE + "/r/7%2F?b=2"),
    (BASE + "/r/{id}?a=1&", "b=2", BASE + "/r/7%2F?a=1&b=2"),
    (BASE + "/x/{id}/y/{id}/{name}", "q", BASE + "/x/7%2F/y/7%2F/n%C3%A9?q"),
    (BASE + "/fixed", "a=1;b=%zz", BASE + "/fixed?a=1;b=%zz"),
])
def test_upstream_url(target: str, query: str, expected: str) -> None:
    table = RouteTable.build([route("/r/{id}/{name}", target=target)])
    assert match(table, "/r/7%2F/n%C3%A9").upstream_url(query) == expected


@pytest.mark.parametrize(("base", "target", "expected"), [
    ("https://x/v1", "/reports", "https://x/v1/reports"),
    ("https://x/v1/", "/reports", "https://x/v1/reports"),
    ("https://x", "/reports", "https://x/reports"),
    ("https://x/", "/reports/{id}?a=1", "https://x/reports/{id}?a=1"),
    ("https://x/v1?k=1", "/r?a=1", "https://x/v1/r?k=1&a=1"),
    ("https://x/v1", "/r?", "https://x/v1/r?"),
    ("https://x/v1", "https://other/p?a=1", "https://other/p?a=1"),
    (None, "HTTP://other/p", "HTTP://other/p"),
])
def test_join_target(base: str | None, target: str, expected: str) -> None:
    assert join_target(base, target) == expected


@pytest.mark.parametrize(("base", "target"), [
    (None, "/reports"), ("ftp://x", "/reports"), ("https://x", "reports"),
    ("https://x", "//evil.example/p"), ("https://x", "ftp://x/p"),
])
def test_join_target_refuses(base: str | None, target: str) -> None:
    with pytest.raises(TemplateError):
        join_target(base, target)


# --- building --------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "target"), [
    ("reports", BASE + "/r"),
    ("/a//b", BASE + "/r"),
    ("/a/", BASE + "/r"),
    ("/{rest:path}/x", BASE + "/r"),
    ("/{a}/{a}", BASE + "/r"),
    ("/a{b}", BASE + "/r"),
    ("/a/..", BASE + "/r"),
    ("/r/{id}", "/relative/{id}"),
    ("/r/{id}", "https://{id}.example/r"),
    ("/r/{id}", BASE + "/r?x={id}"),
    ("/r/{id}", BASE + "/r/{other}"),
    ("/r/{id}", BASE + "/r/{id"),
])
def test_bad_rows_are_rejected_not_fatal(path: str, target: str) -> None:
    bad, good = route(path, target=target), route("/ok")
    table = RouteTable.build([bad, good])
    assert table.routes() == (good,)
    assert [r.route for r in table.rejected] == [bad]
    assert match(table, "/ok").route is good


def test_same_shape_same_scope_same_method_keeps_one_deterministically() -> None:
    x, y = route("/a/{x}"), route("/a/{y}")
    for order in ([x, y], [y, x]):
        table = RouteTable.build(order)
        assert match(table, "/a/1").route is x
        assert match(table, "/a/1").params == {"x": "1"}
        assert [r.route for r in table.rejected] == [y]


def test_param_names_come_from_the_matched_route() -> None:
    get, post = route("/a/{x}", "GET"), route("/a/{y}", "POST", target=BASE + "/p/{y}")
    table = RouteTable.build([get, post])
    assert match(table, "/a/1", "GET").params == {"x": "1"}
    assert match(table, "/a/1", "POST").upstream_url("") == BASE + "/p/1"


def test_route_is_frozen_and_hashable() -> None:
    config: dict[str, Any] = {"header_name": "X-Key", "nested": {"a": [1, 2]}}
    r = route("/r", auth_config=config, options={"timeout": 5})
    config["header_name"] = "changed"
    assert r.auth_config["header_name"] == "X-Key"
    assert isinstance(r.auth_config["nested"], Mapping)
    assert r.auth_config["nested"]["a"] == (1, 2)
    with pytest.raises(TypeError):
        r.options["timeout"] = 1  # type: ignore[index]
    assert {r: 1}[r] == 1
    assert dict(r.options) == {"timeout": 5}


def test_accessors() -> None:
    a, b = route("/a"), route("/b", slug="billing", service=uuid.uuid4())
    table = RouteTable.build([a, b])
    assert table.size == len(table) == 2
    assert table.services() == ("billing", "reports")
    assert table.routes("billing") == (b,)
    assert table.get(a.id) is a
    assert table.get(uuid.uuid4()) is None
    assert RouteTable.empty().size == 0


def test_a_slug_belongs_to_one_service() -> None:
    mine, impostor = route("/a"), route("/b", service=uuid.uuid4())
    table = RouteTable.build([mine, impostor])
    assert len(table) == 1
    assert len(table.rejected) == 1


def test_a_method_that_is_not_a_token_is_rejected() -> None:
    table = RouteTable.build([route("/r", "GE T"), route("/r", "")])
    assert table.size == 0 and len(table.rejected) == 2


# --- scale -----------------------------------------------------------------------------------

def test_ten_thousand_routes_all_match() -> None:
    routes: list[Route] = []
    for s in range(100):  # 100 services, 25 templates each, in two scopes
        service = uuid.uuid4()
        for i in range(25):
            routes.append(route(f"/v{i}/items/{{id}}", "GET", slug=f"svc{s}", service=service,
                                target=f"{BASE}/s{s}/v{i}/{{id}}"))
            routes.append(route(f"/v{i}/items/{{id}}", "GET", slug=f"svc{s}", service=service,
                                installation=INSTALL, target=f"{BASE}/own/s{s}/v{i}/{{id}}"))
    big = uuid.uuid4()
    for i in range(5000):  # and one service with 5,000 routes
        routes.append(route(f"/r{i}/{{id}}/{{rest:path}}", "*" if i % 2 else "POST",
                            slug="big", service=big, target=f"{BASE}/big/{i}/{{id}}/{{rest}}"))
    table = RouteTable.build(routes)
    assert table.size == 10_000 and not table.rejected
    for s in range(100):
        for i in range(25):
            path = f"/v{i}/items/{s}-{i}"
            assert match(table, path, slug=f"svc{s}").upstream_url("") == \
                f"{BASE}/own/s{s}/v{i}/{s}-{i}"
            assert match(table, path, slug=f"svc{s}", installation=None).upstream_url("") == \
                f"{BASE}/s{s}/v{i}/{s}-{i}"
    for i in range(5000):
        found = match(table, f"/r{i}/x/a/b", "POST", slug="big")
        assert found.upstream_url("q=1") == f"{BASE}/big/{i}/x/a/b?q=1"
    with pytest.raises(MethodNotAllowed):
        match(table, "/r0/x/a", "GET", slug="big")
    with pytest.raises(NoRoute):
        match(table, "/r5000/x/a", slug="big")

