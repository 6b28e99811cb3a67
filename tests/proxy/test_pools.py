"""gateway.proxy.pools on an event loop: our own scheduling logic, tested directly."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from gateway.proxy.pools import Lease, PoolTimeout, UpstreamPools, host_key

HOST = ("http", "plugin.example", 80)


async def settle() -> None:
    """Let every task woken so far run."""
    for _ in range(5):
        await asyncio.sleep(0)


class Served(list[tuple[str, Lease]]):
    """Who got a slot, in order, with the lease to give it back."""

    @property
    def spaces(self) -> list[str]:
        return [space for space, _ in self]

    async def release_in_order(self, count: int) -> None:
        """Give back the first `count` slots one by one, letting the next holders run between."""
        for n in range(count):
            await settle()
            self[n][1].release()
        await settle()


def start(pools: UpstreamPools, space: str, served: Served) -> asyncio.Task[Lease]:
    async def take() -> Lease:
        lease = await pools.acquire(HOST, space)
        served.append((space, lease))
        return lease

    return asyncio.create_task(take())


def test_host_key_is_scheme_host_and_port() -> None:
    assert host_key(URL("http://Plugin.Example/a?b")) == ("http", "plugin.example", 80)
    assert host_key(URL("https://plugin.example:8443/")) == ("https", "plugin.example", 8443)
    assert host_key(URL("http://plugin.example:80/x")) == host_key(URL("http://plugin.example/y"))


def test_share_is_floored_but_at_least_one() -> None:
    assert UpstreamPools(64, 0.5, 1).space_limit == 32
    assert UpstreamPools(5, 0.5, 1).space_limit == 2
    assert UpstreamPools(1, 0.5, 1).space_limit == 1
    assert UpstreamPools(4, 1.0, 1).space_limit == 4
    with pytest.raises(ValueError):
        UpstreamPools(4, 0, 1)


async def test_free_slot_under_share_is_taken_at_once_and_the_share_is_a_bound() -> None:
    pools = UpstreamPools(4, 0.5, 5)
    a1 = await pools.acquire(HOST, "A")
    a2 = await pools.acquire(HOST, "A")
    assert pools.holding(HOST, "A") == 2
    third = Served()
    waiting = start(pools, "A", third)
    await settle()
    assert not third and pools.waiting(HOST) == 1  # two slots are free, but A holds its share
    b = await pools.acquire(HOST, "B")  # B is not behind A's waiter
    a1.release()
    await settle()
    assert third.spaces == ["A"] and pools.holding(HOST) == 3
    for lease in (a2, b, waiting.result()):
        lease.release()
    assert pools.hosts == 0  # nothing held, nobody waiting: no state left


async def test_release_is_idempotent() -> None:
    pools = UpstreamPools(2, 1.0, 5)
    lease = await pools.acquire(HOST, "A")
    lease.release()
    lease.release()
    assert pools.holding(HOST) == 0 and pools.hosts == 0
    other = await pools.acquire(HOST, "B")
    lease.release()  # an old lease cannot give back somebody else's slot
    assert pools.holding(HOST) == 1
    other.release()


async def test_hosts_are_separate() -> None:
    pools = UpstreamPools(1, 1.0, 5)
    other_host = ("http", "other.example", 80)
    held = await pools.acquire(HOST, "A")
    elsewhere = await asyncio.wait_for(pools.acquire(other_host, "A"), 0.5)
    held.release()
    elsewhere.release()


async def test_waiting_spaces_are_served_round_robin() -> None:
    """Pool of one: a holder, then A queues three and B three: A B A B A B, not A A A B B B."""
    pools = UpstreamPools(1, 1.0, 5)
    holder = await pools.acquire(HOST, "H")
    served = Served()
    for _ in range(3):
        start(pools, "A", served)
    await settle()
    for _ in range(3):
        start(pools, "B", served)
    await settle()
    assert pools.waiting(HOST) == 6
    holder.release()
    await served.release_in_order(6)
    assert served.spaces == ["A", "B", "A", "B", "A", "B"]
    assert pools.hosts == 0


async def test_a_space_at_its_share_delays_a_newcomer_by_one_turnover_at_most() -> None:
    """A and C each hold their share of a full pool with queues of their own; B's request gets
    the very next slot that frees, whoever frees it (first come, first served would put B last)."""
    pools = UpstreamPools(4, 0.5, 5)
    held = {space: [await pools.acquire(HOST, space) for _ in range(2)] for space in ("A", "C")}
    served = Served()
    for space in ("A", "C"):
        for _ in range(3):
            start(pools, space, served)
    await settle()
    start(pools, "B", served)
    await settle()
    assert not served
    held["A"].pop().release()
    await settle()
    assert served.spaces == ["B"]
    # Once B is done, A (under its share again) and C (at its share) share what frees.
    served[0][1].release()
    await settle()
    assert served.spaces == ["B", "A"]
    for lease in held["A"] + held["C"]:
        lease.release()
    await served.release_in_order(7)
    assert sorted(served.spaces) == ["A", "A", "A", "B", "C", "C", "C"]
    assert pools.hosts == 0


async def test_a_wait_past_the_timeout_raises_and_leaves_no_trace() -> None:
    pools = UpstreamPools(1, 1.0, 0.05)
    held = await pools.acquire(HOST, "A")
    with pytest.raises(PoolTimeout):
        await pools.acquire(HOST, "B")
    assert pools.waiting(HOST) == 0 and pools.holding(HOST) == 1
    held.release()
    assert pools.hosts == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    pools = UpstreamPools(1, 1.0, 5)
    held = await pools.acquire(HOST, "A")
    served = Served()
    gone = start(pools, "B", served)
    await settle()
    gone.cancel()
    await settle()
    assert pools.waiting(HOST) == 0
    start(pools, "C", served)
    await settle()
    held.release()
    await settle()
    assert served.spaces == ["C"]
    served[0][1].release()
    assert pools.hosts == 0


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    pools = UpstreamPools(1, 1.0, 5)
    held = await pools.acquire(HOST, "A")
    served = Served()
    first = start(pools, "B", served)
    start(pools, "C", served)
    await settle()
    held.release()  # hands the slot to B's waiter; B's task has not run yet...
    first.cancel()  # ...and its caller hangs up in the same instant
    await settle()
    assert first.cancelled()
    assert served.spaces == ["C"] and pools.holding(HOST, "C") == 1  # the wake-up was not lost
    served[0][1].release()
    assert pools.hosts == 0


async def test_state_is_bounded_by_holders_and_waiters() -> None:
    """Many hosts and spaces come and go: nothing of them stays."""
    pools = UpstreamPools(2, 0.5, 0.01)
    for n in range(200):
        key = ("http", f"h{n}.example", 80)
        lease = await pools.acquire(key, f"space-{n}")
        with pytest.raises(PoolTimeout):
            await pools.acquire(key, f"space-{n}")  # over its share: waits, times out
        lease.release()
    assert pools.hosts == 0


async def test_random_traffic_keeps_the_bounds_and_ends_with_no_state() -> None:
    """Seeded random arrivals, hang-ups and timeouts across three hosts and five spaces."""
    import random

    rng = random.Random(7)
    pools = UpstreamPools(3, 0.5, 0.02)
    hosts = [("http", f"h{n}.example", 80) for n in range(3)]
    worst: dict[str, int] = {"host": 0, "space": 0}

    async def call(key: tuple[str, str, int | None], space: str) -> None:
        try:
            lease = await pools.acquire(key, space)
        except PoolTimeout:
            return
        try:
            worst["host"] = max(worst["host"], pools.holding(key))
            worst["space"] = max(worst["space"], pools.holding(key, space))
            await asyncio.sleep(rng.random() * 0.01)
        finally:
            lease.release()

    tasks = []
    for _ in range(600):
        tasks.append(asyncio.create_task(call(rng.choice(hosts), f"s{rng.randrange(5)}")))
        if rng.random() < 0.2:
            rng.choice(tasks).cancel()
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() * 0.002)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert worst == {"host": 3, "space": 1}
    assert pools.hosts == 0
