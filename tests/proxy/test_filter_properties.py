"""Properties of what an attacker reaches first: the header filters, the path parser and the cache
key (hypothesis). The address classifier's properties are in test_address_classifier.py."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote
from uuid import UUID

import pytest
from hypothesis import given, settings, strategies as st
from multidict import CIMultiDict

from gateway.errors import BadRequest, NotFound
from gateway.proxy.cache import cache_key
from gateway.proxy.headers import (NOT_FORWARDED, NOT_RETURNED, downstream_response_headers,
                                   upstream_request_headers)
from gateway.proxy.target import parse_target
from routing.table import Route

SPACE = "/spaces/00000000-0000-0000-0000-000000000001/plugins/demo"

# NOT_FORWARDED includes the names the gateway sets itself (X-Request-ID, traceparent).
NEVER_FORWARDED = sorted(NOT_FORWARDED
                         | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                            "x-forwarded-port", "x-gateway-user-id", "x-gateway-space-id",
                            "x-gateway-assertion", "x-gateway-anything"})
NEVER_RETURNED = sorted(NOT_RETURNED | {"access-control-allow-origin", "access-control-allow-credentials",
                                        "access-control-expose-headers"})
TOKEN_CHARS = "!#$%&'*+.^`|~-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def spellings(names: list[str]) -> st.SearchStrategy[str]:
    """Any letter case of one of `names`."""
    return st.sampled_from(names).flatmap(
        lambda name: st.tuples(*[st.sampled_from(sorted({c.lower(), c.upper()})) for c in name]).map("".join))


harmless = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(lambda n: n.lower() not in NEVER_FORWARDED)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20)


@settings(max_examples=300)
@given(bad=st.lists(st.tuples(spellings(NEVER_FORWARDED), values), min_size=1, max_size=6),
       good=st.lists(st.tuples(harmless, values), max_size=6))
def test_no_hop_by_hop_credential_forwarding_or_gateway_name_is_ever_forwarded(
        bad: list[tuple[str, str]], good: list[tuple[str, str]]) -> None:
    incoming = CIMultiDict(bad + good)
    out = {name.lower() for name in upstream_request_headers(incoming)}
    assert not out & set(NEVER_FORWARDED)
    assert not any(name.startswith(("x-gateway-", "x-forwarded-")) for name in out)
    assert not any("_" in name for name in out)
    # And what is harmless passes (unless a generated Connection header named it hop-by-hop): the
    # filter is not simply "drop everything".
    named = {t.strip().lower() for n, v in bad if n.lower() == "connection" for t in v.split(",")}
    assert out == {n.lower() for n, _ in good if "_" not in n and n.lower() not in named
                   and not n.lower().startswith(("x-gateway-", "x-forwarded-"))}


@given(name=st.text(TOKEN_CHARS, min_size=1, max_size=12), at=st.integers(0, 12))
def test_a_name_with_an_underscore_never_passes(name: str, at: int) -> None:
    spelled = name[:at] + "_" + name[at:]
    assert not upstream_request_headers(CIMultiDict({spelled: "1"}))


@given(name=st.text(min_size=1, max_size=12).filter(lambda n: any(not c.isascii() or c.isspace() for c in n)))
def test_a_name_that_is_not_a_token_never_passes(name: str) -> None:
    assert not upstream_request_headers(CIMultiDict({name: "1"}))


@given(connection=st.lists(harmless, min_size=1, max_size=3))
def test_names_listed_in_connection_are_hop_by_hop(connection: list[str]) -> None:
    incoming = CIMultiDict([("Connection", ", ".join(connection))] + [(n, "1") for n in connection])
    assert not upstream_request_headers(incoming)
    assert not downstream_response_headers(incoming)


@settings(max_examples=300)
@given(bad=st.lists(st.tuples(spellings(NEVER_RETURNED), values), min_size=1, max_size=6))
def test_no_filtered_response_header_is_ever_returned(bad: list[tuple[str, str]]) -> None:
    out = downstream_response_headers(CIMultiDict(bad + [("X-Plugin", "1")]))
    assert {name.lower() for name in out} == {"x-plugin"}


DOTS = st.sampled_from([".", ".."])
PARAMETER = st.text("abcxyz=;", max_size=4)


def encodings(segment: str) -> st.SearchStrategy[str]:
    """The segment as written, percent-encoded once or twice, dots and `;` alike, in any case."""
    once = "".join(f"%{ord(c):02x}" if c in ".;" else c for c in segment)
    twice = once.replace("%", "%25")
    return st.sampled_from([segment, once, once.upper(), twice, quote(segment, safe="")])


@settings(max_examples=300)
@given(segment=st.one_of(DOTS, st.tuples(DOTS, st.just(";"), PARAMETER).map("".join)).flatmap(encodings),
       before=st.lists(st.text("abc", min_size=1, max_size=3), max_size=2),
       after=st.lists(st.text("abc", min_size=1, max_size=3), max_size=2))
def test_a_segment_read_as_a_dot_segment_anywhere_is_refused(segment: str, before: list[str], after: list[str]) -> None:
    path = "/".join([SPACE, *before, segment, *after])
    with pytest.raises(BadRequest):
        parse_target(path)


@given(segments=st.lists(st.text("abcXYZ019-_~", min_size=1, max_size=6), max_size=4),
       query=st.text("a=b&.%/;", max_size=8))
def test_a_plain_path_parses_to_itself(segments: list[str], query: str) -> None:
    path = "/" + "/".join(segments)
    space, slug, mapped = parse_target(f"{SPACE}{path}?{query}")
    assert (space, slug, mapped) == (UUID(int=1), "demo", path if segments else "/")


@given(raw=st.text(max_size=60))
def test_any_input_is_parsed_or_refused_with_a_client_error(raw: str) -> None:
    try:
        parse_target(raw)
    except (BadRequest, NotFound):
        pass


ROUTE = Route(id=UUID(int=10), service_id=UUID(int=11), service_slug="demo", route_path="/x", method="GET",
              target_url="https://vendor.example/x", cache_enabled=True, cache_ttl=60)
ids = st.uuids()
KEY_FIELDS = dict(space_id=ids, caller=st.text(max_size=8), installation_id=ids, route=ids)


@settings(max_examples=300)
@given(a=st.fixed_dictionaries(KEY_FIELDS), b=st.fixed_dictionaries(KEY_FIELDS))
def test_the_cache_key_differs_whenever_space_caller_installation_or_route_differs(
        a: dict[str, object], b: dict[str, object]) -> None:
    def key(fields: dict[str, object]) -> str:
        return cache_key(space_id=fields["space_id"], caller=fields["caller"],  # type: ignore[arg-type]
                         route=replace(ROUTE, id=fields["route"]), installation_id=fields["installation_id"],  # type: ignore[arg-type]
                         installation_version="1", method="GET", path="/x", raw_query="", accept="",
                         accept_encoding="")
    assert (key(a) == key(b)) == (a == b)
