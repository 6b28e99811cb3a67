"""gateway.upstream_safety.address_is_public: IPv6 forms that carry an IPv4 address are judged by
that address (the contract's "Upstream safety"), at registration and at request time alike."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.resolver import literal_address_refused
from gateway.upstream_safety import UnsafeUpstream, address_is_public, check_registration_url

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
TEREDO_SERVER = V4("65.54.227.120")  # a public Teredo server, for the forms that vary the client
PUBLIC_CLIENT = V4("93.184.216.34")


def mapped(v: V4) -> V6:
    return V6((0xFFFF << 32) | int(v))


def compatible(v: V4) -> V6:
    return V6(int(v))


def nat64(v: V4) -> V6:
    return V6((0x0064FF9B << 96) | int(v))


def nat64_local(v: V4) -> V6:
    return V6((0x0064FF9B0001 << 80) | int(v))


def six_to_four(v: V4, subnet: int = 0x1234, interface: int = 0xDEAD_BEEF) -> V6:
    return V6((0x2002 << 112) | (int(v) << 80) | (subnet << 64) | interface)


def teredo_client(v: V4, server: V4 = TEREDO_SERVER) -> V6:
    return V6((0x20010000 << 96) | (int(server) << 64) | (0x8000 << 48) | (0xFFFF << 32)
              | (~int(v) & 0xFFFFFFFF))


def teredo_server(v: V4) -> V6:
    return teredo_client(PUBLIC_CLIENT, server=v)


FORMS: dict[str, Callable[[V4], V6]] = {
    "mapped": mapped, "compatible": compatible, "nat64": nat64, "nat64-local": nat64_local,
    "6to4": six_to_four, "teredo-client": teredo_client, "teredo-server": teredo_server,
}
NON_GLOBAL_V4 = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "172.16.5.4", "100.64.0.1",
                 "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.0.8"]
PUBLIC_V4 = ["93.184.216.34", "8.8.8.8", "1.1.1.1"]
NON_GLOBAL_NETS = ["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
                   "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "198.18.0.0/15"]

ipv4s = st.ip_addresses(v=4)
non_global_ipv4s = st.sampled_from(NON_GLOBAL_NETS).flatmap(lambda net: st.ip_addresses(network=net))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", NON_GLOBAL_V4)
def test_embedded_non_global_addresses_are_refused(form: str, v4: str) -> None:
    address = str(FORMS[form](V4(v4)))
    assert not address_is_public(address), address
    assert literal_address_refused(f"[{address}]")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", PUBLIC_V4)
def test_embedded_public_addresses_are_accepted(form: str, v4: str) -> None:
    address = str(FORMS[form](V4(v4)))
    assert address_is_public(address), address
    assert not literal_address_refused(f"[{address}]")


@pytest.mark.parametrize("address", [
    "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::", "2001:0:4136:e378:8000:ffff:80ff:fffe",
    # A local-use NAT64 address off the /96 form may carry 10.0.0.1 elsewhere: refused.
    "64:ff9b:1:a00:1::5db8:d822", "64:ff9b:1::1:5db8:d822",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1",
])
def test_written_forms(address: str) -> None:
    assert not address_is_public(address)


@pytest.mark.parametrize("address", [
    "2606:4700:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1", "::ffff:93.184.216.34",
    "2606:4700::c000:5",  # its last 32 bits spell 192.0.0.5, but it is no IPv4 form
])
def test_public_written_forms(address: str) -> None:
    assert address_is_public(address)


@given(v=ipv4s, form=st.sampled_from(sorted(FORMS)))
def test_a_form_is_judged_as_its_ipv4_address(v: V4, form: str) -> None:
    assert address_is_public(str(FORMS[form](v))) == address_is_public(str(v))


@given(v=non_global_ipv4s, form=st.sampled_from(sorted(FORMS)))
def test_non_global_ipv4_is_public_in_no_form(v: V4, form: str) -> None:
    assert not address_is_public(str(v))
    assert not address_is_public(str(FORMS[form](v)))


@given(v=non_global_ipv4s, subnet=st.integers(0, 0xFFFF), interface=st.integers(0, 2**64 - 1))
def test_6to4_is_judged_whatever_the_rest(v: V4, subnet: int, interface: int) -> None:
    assert not address_is_public(str(six_to_four(v, subnet, interface)))


@given(v=non_global_ipv4s, server=ipv4s)
def test_teredo_is_refused_when_either_address_is_not_global(v: V4, server: V4) -> None:
    assert not address_is_public(str(teredo_client(v, server)))
    assert not address_is_public(str(teredo_client(server, v)))


@pytest.mark.parametrize("url", [
    "http://[64:ff9b::7f00:1]/x", "http://[2002:a00:1::1]:8080/x", "https://[::a9fe:a9fe]/latest",
    "http://[2001:0:4136:e378:8000:ffff:f5ff:fffe]/", "http://[64:ff9b:1::a00:1]/",
])
async def test_registration_refuses_the_forms(url: str) -> None:
    with pytest.raises(UnsafeUpstream):
        await check_registration_url(url, allow_private=False)
    await check_registration_url(url, allow_private=True)


async def test_registration_accepts_public_forms() -> None:
    for url in ("http://[64:ff9b::5db8:d822]/x", "http://[2002:5db8:d822::1]/x", "http://93.184.216.34/"):
        await check_registration_url(url, allow_private=False)
