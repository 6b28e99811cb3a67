"""Vendor-chosen upstream URLs must not reach the gateway's own network.

Unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS is on, a target that is, or resolves to, a loopback,
private, link-local (169.254.169.254 included), multicast, unspecified or otherwise non-global
address is refused. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4,
Teredo) are judged by that IPv4 address: a translator or relay would deliver to it.

Names are resolved by c-ares (aiodns) on the event loop, never by getaddrinfo in the default
thread pool that every upstream call shares; at most MAX_LOOKUPS_IN_FLIGHT lookups run at once
per event loop, and one that takes longer than LOOKUP_TIMEOUT counts as "does not resolve".
Callers check the caller's rights first and never resolve inside a database transaction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Sequence
from typing import Final, NamedTuple

import aiodns
import pycares
from yarl import URL

# Per event loop, i.e. per worker process. c-ares queries are cheap, but each one that waits on a
# slow name holds a socket and a slot in c-ares' queue: names that any user may submit must not
# pile up without bound. 32 keeps a worker's honest lookups (the connector caches answers for
# ttl_dns_cache seconds) far from the bound while a flood of slow names waits its turn.
MAX_LOOKUPS_IN_FLIGHT: Final = 32
# Waiting for a slot counts too: a name that has no answer by then "does not resolve".
LOOKUP_TIMEOUT: Final = 2.0

_IPv4 = ipaddress.IPv4Address
_IPv6 = ipaddress.IPv6Address
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765), same idea
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_NAT64_LOCAL_96: Final = ipaddress.IPv6Network("64:ff9b:1::/96")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")


# ipaddress's tables of non-global ranges differ between Python versions (3.11 takes 192.0.0.8 for
# global, for one); the IANA special-purpose ranges that some versions miss are refused here too.
_NOT_GLOBAL: Final = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24",     # IETF protocol assignments (192.0.0.9 and .10 are anycast: no upstream)
    "192.88.99.0/24",   # the old 6to4 relay anycast: a relay would deliver anywhere
    "3fff::/20",        # documentation (RFC 9637)
    "5f00::/16",        # SRv6 SIDs (RFC 9602)
))


class UnsafeUpstream(ValueError):
    pass


class LookupFailed(OSError):
    """The name has no usable answer (no such name, a DNS error, or no answer in time)."""


def embedded_ipv4(ip: _IPv6) -> tuple[_IPv4, ...] | None:
    """The IPv4 addresses an IPv6 address stands for, or None when it embeds none.

    A local-use NAT64 prefix (64:ff9b:1::/48) may carry its IPv4 address at any of RFC 6052's
    positions, chosen by the operator; only the /96 form (bits 48–95 zero) says unambiguously
    where it is, so any other address in that /48 is judged as the unspecified address (refused).
    """
    value = int(ip)
    low32 = _IPv4(value & 0xFFFFFFFF)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64 or ip in _COMPATIBLE:
        return (low32,)
    if ip in _NAT64_LOCAL:
        return (low32,) if ip in _NAT64_LOCAL_96 else (_IPv4(0),)
    if ip in _SIX_TO_FOUR:
        return (_IPv4((value >> 80) & 0xFFFFFFFF),)  # bits 16–48
    if ip in _TEREDO:
        # Server in bits 32–64; the client's address is the last 32 bits, inverted (RFC 4380).
        return (_IPv4((value >> 64) & 0xFFFFFFFF), _IPv4(~value & 0xFFFFFFFF))
    return None


def _is_public(ip: _IPv4 | _IPv6) -> bool:
    # Same version only: `in` compares bits, and a v6 address's last 32 bits may look like a v4 range.
    return ip.is_global and not ip.is_multicast and not any(
        ip.version == net.version and ip in net for net in _NOT_GLOBAL)


def address_is_public(address: str) -> bool:
    """True for a global unicast address; an IPv6 form with IPv4 inside is judged by that IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, _IPv4):
        return _is_public(ip)
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        return all(_is_public(v4) for v4 in embedded)
    return _is_public(ip)


def literal_address(host: str) -> str | None:
    """The IP address a URL host spells (brackets and zone stripped), or None for a name."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return None
    return bare


class Address(NamedTuple):
    family: socket.AddressFamily
    host: str
    port: int


class Lookups:
    """c-ares lookups with a bound on how many are in flight and a deadline for each.

    A slot is held until c-ares itself has finished with the query (its own timeout is set to
    the same deadline), not only until the caller gives up: the bound is on real queries.
    The aiodns channel binds to the running loop, so it is made on first use.
    """

    def __init__(self, *, nameservers: Sequence[str] | None = None, timeout: float = LOOKUP_TIMEOUT,
                 max_in_flight: int = MAX_LOOKUPS_IN_FLIGHT) -> None:
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._nameservers = list(nameservers) if nameservers else None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._resolver: aiodns.DNSResolver | None = None
        self.started = 0  # lookups handed to c-ares, for tests and curiosity
        self.in_flight = 0
        self.peak_in_flight = 0

    def _channel(self) -> aiodns.DNSResolver:
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(nameservers=self._nameservers, loop=asyncio.get_running_loop(),
                                                timeout=self.timeout, tries=1)
        return self._resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[Address]:
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
                query = self._start(host, port, family)
                # Shielded: the caller's deadline must not free the slot while c-ares still works.
                answer = await asyncio.shield(query)
        except TimeoutError:
            raise LookupFailed(f"no answer for {host!r} within {self.timeout} s") from None
        except aiodns.error.DNSError as exc:
            raise LookupFailed(f"{host!r} does not resolve") from exc
        found = [Address(socket.AddressFamily(node.family), node.addr[0].decode("ascii"), port)
                 for node in answer.nodes if node.family in (socket.AF_INET, socket.AF_INET6)]
        if not found:
            raise LookupFailed(f"{host!r} has no addresses")
        return found

    def _start(self, host: str, port: int,
               family: socket.AddressFamily) -> asyncio.Future[pycares.AddrInfoResult]:
        try:
            query = self._channel().getaddrinfo(host, family=family, port=port or None,
                                                type=socket.SOCK_STREAM)
        except Exception as exc:  # a name c-ares cannot even encode, or no channel to be had
            self._slots.release()
            raise LookupFailed(f"{host!r} cannot be looked up") from exc
        self.started += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        query.add_done_callback(self._finished)
        return query

    def _finished(self, query: asyncio.Future[pycares.AddrInfoResult]) -> None:
        self.in_flight -= 1
        self._slots.release()
        if not query.cancelled():
            query.exception()  # retrieved: an answer nobody waited for any more is not an error

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()  # cancels what is in flight; their callbacks free the slots
            self._resolver = None


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Lookups] = weakref.WeakKeyDictionary()


def shared_lookups() -> Lookups:
    """The running loop's one Lookups, shared by registration checks and upstream connects."""
    loop = asyncio.get_running_loop()
    lookups = _SHARED.get(loop)
    if lookups is None:
        lookups = _SHARED[loop] = Lookups()
    return lookups


def use_lookups(lookups: Lookups | None) -> Lookups | None:
    """Put `lookups` in place of the running loop's shared one (None: back to a default one).
    Returns the one it replaced; for tests that point c-ares at their own DNS server."""
    loop = asyncio.get_running_loop()
    previous = _SHARED.pop(loop, None)
    if lookups is not None:
        _SHARED[loop] = lookups
    return previous


async def check_registration_url(url: str, *, allow_private: bool, lookups: Lookups | None = None) -> None:
    """Refuse a URL whose host is, or now resolves to, a non-global address.

    A name that does not resolve (in time) is accepted: it is checked again at request time.
    """
    if allow_private:
        return
    parsed = URL(url)
    host = parsed.host or ""
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await (lookups or shared_lookups()).resolve(host, parsed.port or 443)
        except (LookupFailed, UnicodeError, ValueError):
            return
        addresses = [a.host for a in found]
    for address in addresses:
        if not address_is_public(address):
            raise UnsafeUpstream("points at a private, loopback or link-local address")
