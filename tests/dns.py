"""A tiny DNS server on 127.0.0.1 (UDP, a free port) for tests of the gateway's c-ares lookups.

It answers A and AAAA questions for the names it is given, each after that name's delay, and
NXDOMAIN for any other name. It counts the questions it gets and how many it holds unanswered at
once, so a test can tell how many lookups were really in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

from gateway.upstream_safety import Lookups, use_lookups

A, AAAA = 1, 28


@dataclass
class Zone:
    """name (lower case, no final dot) → (addresses, delay in seconds)."""

    records: dict[str, tuple[list[str], float]] = field(default_factory=dict)
    default_delay: float = 0.0  # for names that are not in `records` (answered NXDOMAIN)

    def add(self, name: str, *addresses: str, delay: float = 0.0) -> str:
        self.records[name.lower()] = (list(addresses), delay)
        return name


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.questions: list[str] = []
        self.pending = 0
        self.peak_pending = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            name, qtype, question_end = _question(data)
        except (IndexError, struct.error, UnicodeDecodeError):
            return
        self.questions.append(name)
        addresses, delay = self.zone.records.get(name, (None, self.zone.default_delay))
        answer = _answer(data, question_end, qtype, addresses)
        self.pending += 1
        self.peak_pending = max(self.peak_pending, self.pending)
        asyncio.get_running_loop().call_later(delay, self._send, answer, addr)

    def _send(self, answer: bytes, addr: tuple[str, int]) -> None:
        self.pending -= 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    @property
    def nameserver(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"


def _question(data: bytes) -> tuple[str, int, int]:
    labels, offset = [], 12
    while data[offset]:
        length = data[offset]
        labels.append(data[offset + 1: offset + 1 + length].decode("ascii"))
        offset += 1 + length
    qtype, _ = struct.unpack("!HH", data[offset + 1: offset + 5])
    return ".".join(labels).lower(), qtype, offset + 5


def _answer(query: bytes, question_end: int, qtype: int, addresses: list[str] | None) -> bytes:
    (query_id,) = struct.unpack("!H", query[:2])
    if addresses is None:
        return struct.pack("!HHHHHH", query_id, 0x8183, 1, 0, 0, 0) + query[12:question_end]
    records = b""
    count = 0
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if (qtype == A) != (ip.version == 4) or qtype not in (A, AAAA):
            continue
        rdata = ip.packed
        records += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
        count += 1
    return struct.pack("!HHHHHH", query_id, 0x8180, 1, count, 0, 0) + query[12:question_end] + records


@asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[DnsServer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: DnsServer(zone),
                                                              local_addr=("127.0.0.1", 0))
    try:
        yield protocol
    finally:
        transport.close()


@asynccontextmanager
async def shared_dns(zone: Zone, *, timeout: float = 2.0,
                     max_in_flight: int | None = None) -> AsyncIterator[tuple[DnsServer, Lookups]]:
    """A DNS server for `zone`, and the running loop's shared lookups pointed at it (the ones the
    API's registration checks and the proxy's connector use) for as long as this is entered."""
    async with dns_server(zone) as server:
        lookups = Lookups(nameservers=[server.nameserver], timeout=timeout,
                          **({} if max_in_flight is None else {"max_in_flight": max_in_flight}))
        previous = use_lookups(lookups)
        try:
            yield server, lookups
        finally:
            use_lookups(previous)
            await lookups.close()
