"""The one client-address rule (gateway.client_address): the peer, or behind
GATEWAY_TRUSTED_PROXIES the rightmost X-Forwarded-For address that is not a trusted proxy.
Unit tests of the rule, then the access line's `remote` through a real gateway."""

from __future__ import annotations

import logging
import uuid
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.client_address import client_address_from, is_trusted_proxy, parse_address
from tests.conftest import gateway_client, make_settings

PROXIES = (ip_network("10.0.0.0/8"), ip_network("2001:db8:ffff::/48"))


def rule(peer: str, *forwarded_for: str, proxies: Any = PROXIES) -> str:
    return client_address_from(peer, forwarded_for, proxies)


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    assert rule("198.51.100.1", "203.0.113.9") == "198.51.100.1"
    assert rule("198.51.100.1") == "198.51.100.1"
    assert rule("2001:db8::1", "203.0.113.9") == "2001:db8::1"


def test_no_trusted_proxies_means_the_peer() -> None:
    assert rule("10.0.0.1", "203.0.113.9", proxies=()) == "10.0.0.1"


def test_behind_a_trusted_proxy_the_rightmost_untrusted_address() -> None:
    assert rule("10.0.0.1", "203.0.113.9") == "203.0.113.9"
    # What the caller wrote is further left than the proxy's append: never believed.
    assert rule("10.0.0.1", "1.1.1.1, 203.0.113.9") == "203.0.113.9"
    # A chain of trusted proxies is walked through.
    assert rule("10.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.7, 10.0.0.8") == "203.0.113.9"


def test_several_header_lines_are_one_list() -> None:
    assert rule("10.0.0.1", "1.1.1.1", "203.0.113.9, 10.2.0.1") == "203.0.113.9"


def test_every_entry_trusted_gives_the_leftmost() -> None:
    assert rule("10.0.0.1", "10.0.0.3, 10.0.0.2") == "10.0.0.3"


def test_garbage_ends_the_walk_at_the_last_trusted_hop() -> None:
    for garbage in ("unknown", "_hidden", "1.2.3", "1.2.3.4.5", "999.1.1.1", "1.2.3.4:abc", "[::1]junk",
                    "1.2.3.4 5.6.7.8", '"1.2.3.4"', "::ffff:zzz", "01.2.3.4"):
        assert rule("10.0.0.1", f"203.0.113.9, {garbage}") == "10.0.0.1", garbage
        assert rule("10.0.0.1", f"{garbage}, 10.0.0.2") == "10.0.0.2", garbage
    assert rule("10.0.0.1", "") == "10.0.0.1"


def test_empty_list_elements_are_skipped() -> None:
    assert rule("10.0.0.1", "203.0.113.9, , 10.0.0.2,") == "203.0.113.9"
    assert rule("10.0.0.1", ",,") == "10.0.0.1"


def test_ports_are_ignored() -> None:
    assert rule("10.0.0.1", "203.0.113.9:4711") == "203.0.113.9"
    assert rule("10.0.0.1", "[2001:db8::5]:443") == "2001:db8::5"
    assert rule("10.0.0.1", "203.0.113.9, 10.0.0.2:80") == "203.0.113.9"
    assert rule("10.0.0.1", "[2001:db8::5]") == "2001:db8::5"


def test_ipv6_peers_and_entries() -> None:
    assert rule("2001:db8:ffff::1", "2001:db8::77") == "2001:db8::77"
    assert rule("2001:db8:ffff::1", "2001:db8::77, 2001:db8:ffff:1::2") == "2001:db8::77"
    assert rule("2001:db8:ffff::1", "203.0.113.9") == "203.0.113.9"  # a v6 proxy may forward a v4 client
    assert rule("2001:db8:aaaa::1", "203.0.113.9") == "2001:db8:aaaa::1"  # not in the /48


def test_ipv4_mapped_addresses_are_their_ipv4_address() -> None:
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: still the trusted 10/8 proxy.
    assert rule("::ffff:10.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert rule("10.0.0.1", "::ffff:10.0.0.9, ::ffff:203.0.113.9") == "203.0.113.9"
    assert rule("::ffff:198.51.100.1", "203.0.113.9") == "::ffff:198.51.100.1"  # untrusted: as reported


def test_an_unparseable_peer_is_never_trusted() -> None:
    assert rule("", "203.0.113.9") == ""
    assert rule("/run/gateway.sock", "203.0.113.9") == "/run/gateway.sock"
    assert not is_trusted_proxy("", PROXIES) and not is_trusted_proxy("garbage", PROXIES)


def test_is_trusted_proxy() -> None:
    assert is_trusted_proxy("10.9.8.7", PROXIES) and is_trusted_proxy("::ffff:10.9.8.7", PROXIES)
    assert is_trusted_proxy("2001:db8:ffff:12::1", PROXIES)
    assert not is_trusted_proxy("11.0.0.1", PROXIES) and not is_trusted_proxy("10.0.0.1", ())


def test_parse_address() -> None:
    assert str(parse_address(" 203.0.113.9 ")) == "203.0.113.9"
    assert str(parse_address("[2001:db8::1]:8080")) == "2001:db8::1"
    assert parse_address("2001:db8::1:8080") is not None  # a bare v6 address: its last group is no port
    assert parse_address("203.0.113.9:123456") is None


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
entries = st.one_of(addresses, st.text(max_size=12), st.sampled_from(["", " ", "unknown", "[::1]:x"]))


@given(peer=addresses, forwarded=st.lists(entries, max_size=6))
def test_the_result_is_the_peer_or_one_of_the_entries(peer: str, forwarded: list[str]) -> None:
    chosen = rule(peer, ", ".join(forwarded))
    if not is_trusted_proxy(peer, PROXIES):
        assert chosen == peer
    else:
        candidates = {str(parse_address(e)) for e in [peer, *forwarded] if parse_address(e) is not None}
        assert chosen in candidates


@given(client=addresses, left=st.lists(entries, max_size=4),
       proxies=st.lists(st.ip_addresses(network=ip_network("10.0.0.0/8")).map(str), min_size=1, max_size=3))
def test_a_caller_cannot_choose_its_address_behind_trusted_proxies(client: str, left: list[str],
                                                                   proxies: list[str]) -> None:
    """Whatever the caller wrote (left), the first proxy's append names the client it saw."""
    *chain, peer = proxies
    if is_trusted_proxy(client, PROXIES):
        return  # a client inside the trusted network is taken for one more proxy, by design
    expected = str(parse_address(client))
    assert rule(peer, ", ".join([*left, client, *chain])) == expected


# --- the access line's `remote` --------------------------------------------------------------

def access_line(path: Path, start: int, request_id: str) -> dict[str, Any]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [orjson.loads(line) for line in path.read_bytes()[start:].splitlines() if line]
    found = [line for line in lines if line["logger"] == "gateway.access" and line["request_id"] == request_id]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_access_line_remote_follows_the_rule(database_url: str, session_log_file: Path,
                                                       trusted: bool) -> None:
    proxies = (ip_network("127.0.0.0/8"),) if trusted else ()
    async with gateway_client(make_settings(database_url, trusted_proxies=proxies)) as client:
        start = session_log_file.stat().st_size
        rid = f"remote-{uuid.uuid4().hex[:8]}"
        response = await client.get("/healthz", headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.9",
                                                         "X-Request-ID": rid})
        assert response.status == 200
        line = access_line(session_log_file, start, rid)
    assert line["remote"] == ("203.0.113.9" if trusted else "127.0.0.1")
