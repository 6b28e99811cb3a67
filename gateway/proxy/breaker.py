"""Passive circuit breakers, per process, per installation and upstream origin (contract
revision 3, "Plugin health").

GATEWAY_BREAKER_FAILURES consecutive failures of the upstream open the breaker for
GATEWAY_BREAKER_OPEN_SECONDS: calls then answer 503 with `Retry-After` at once, without touching
the upstream (nor waiting for a pooled connection). After the open time one call is let through
(the trial); its success closes the breaker, its failure opens it again. Only the upstream's
failures count (FAILURES below), never the caller's.

With N processes a dead upstream sees at most N x GATEWAY_BREAKER_FAILURES calls before every
breaker is open, also while calls overlap: a failure is learnt only when its call ends (a hanging
upstream: after the route's timeout), so counting ended calls alone would let every call sent
meanwhile through (rate x timeout). A call is therefore admitted only while fewer than
GATEWAY_BREAKER_FAILURES minus the failures already counted are in flight *unvouched*: started
after the upstream last answered. An answer (its head, so a stream vouches at once) vouches for
every call in flight. Further callers wait, at most the route's timeout, for an answer (then they
all go, and count as unvouched until the next one), for the breaker to open (then 503 at once), or
for a free place. A healthy upstream answers all the time, so callers rarely wait; a route whose
upstream answers only after long waits (long polling) should turn its breaker off. (An upstream
that dies while many calls are in flight still gets those calls: the bound is on the calls sent
after its last answer.)

Only breakers that have seen a failure are held, at most MAX_BREAKERS (the least recently
failing dropped first): an outsider cannot grow this by calling many installations.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final
from uuid import UUID

from gateway import metrics
from gateway.errors import ServiceUnavailable

MAX_BREAKERS: Final = 100_000

# Which failures of an upstream call count against its breaker: the upstream's own. Not counted:
# the caller going away, a body too large (413) or too slow (408), no pooled connection free in
# time (our own queue), the plugin's token endpoint failing (gateway/proxy/upstream_auth.py).
FAILURES: Final = frozenset({
    "connect",          # refused, reset, unreachable
    "address_refused",  # the vendor's name does not resolve, or only to addresses we refuse
    "timeout",          # no answer (or no next chunk) within the route's timeout
    "bad_response",     # not HTTP, or a broken head
    "broken_stream",    # the answer broke off mid-body
})
FAILING_STATUSES: Final = frozenset({502, 503, 504})

Key = tuple[UUID, str]  # (installation id, upstream origin "scheme://host:port")


class Outcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # nothing learned about the upstream (the caller's doing)


def outcome_of(failure: str | None, status: int | None) -> Outcome:
    """The one rule: a counted failure kind or a 502/503/504 answer fails; any other answer from
    the upstream succeeds; no answer for another reason tells nothing."""
    if failure in FAILURES:
        return Outcome.FAILURE
    if status is None:
        return Outcome.NEUTRAL
    return Outcome.FAILURE if status in FAILING_STATUSES else Outcome.SUCCESS


@dataclass(slots=True)
class _State:
    service: str
    failures: int = 0
    open_until: float = 0.0  # 0: closed; else open until then, half-open after
    trial: bool = False  # the half-open trial call is in flight


@dataclass(slots=True)
class _Flight:
    """The calls of one key in flight; held only while there are some, or callers waiting."""
    in_flight: int = 0
    unvouched: int = 0  # of those, started since the upstream last answered
    answers: int = 0  # answers seen while held: a call admitted before the last one is vouched for
    # True: the upstream answered, go; False: a place came free or the breaker opened, look again.
    waiters: deque[asyncio.Future[bool]] = field(default_factory=deque)


@dataclass(slots=True)
class Ticket:
    """One admitted call: what settle needs to know about it."""
    key: Key
    trial: bool
    answers: int  # _Flight.answers when admitted
    vouched: bool = False


class BreakerOpen(ServiceUnavailable):
    def __init__(self, retry_after: int) -> None:
        super().__init__("The plugin is failing: calls to it are paused for a moment", retry_after=retry_after)


class Unanswered(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The plugin has not answered the calls in flight: try again in a moment", retry_after=1)


class Breakers:
    def __init__(self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_breakers: int = MAX_BREAKERS) -> None:
        self.threshold = failures
        self.open_seconds = open_seconds
        self.clock = clock
        self.max_breakers = max_breakers
        self._states: OrderedDict[Key, _State] = OrderedDict()
        self._open: dict[UUID, int] = {}  # installation id → its open breakers (for the API)
        self._flights: dict[Key, _Flight] = {}

    async def wait_admit(self, key: Key, wait: float) -> Ticket:
        """Admit a call that try_admit could not, waiting up to `wait` seconds for a place (module
        docstring). Raises BreakerOpen once the breaker opens, Unanswered when no place came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            flight = self._flights.setdefault(key, _Flight())
            waiter: asyncio.Future[bool] = loop.create_future()
            flight.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    go = await waiter
            except (TimeoutError, asyncio.CancelledError) as exc:
                self._forget_waiter(key, flight, waiter)
                if waiter.done() and not waiter.cancelled():
                    self._wake(key)  # woken, but going away: pass the place on
                if isinstance(exc, TimeoutError):
                    raise Unanswered() from None
                raise
            ticket = self.try_admit(key, woken=True, go=go)
            if ticket is not None:
                return ticket

    def try_admit(self, key: Key, woken: bool = False, go: bool = False) -> Ticket | None:
        """Admit a call at once, or None when it must wait (behind the callers already waiting,
        unless it is one of them, `woken`; `go`: woken by an answer, so admitted whatever the
        count); raises BreakerOpen while the breaker is open."""
        state = self._states.get(key)
        trial = False
        if state is not None and state.open_until:
            now = self.clock()
            if now < state.open_until:
                raise BreakerOpen(max(1, math.ceil(state.open_until - now)))
            if state.trial:  # half-open, and another call is the trial
                raise BreakerOpen(1)
            state.trial = trial = True
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
        elif not (trial or go) and ((flight.waiters and not woken) or flight.unvouched >= self._places(state)):
            return None
        flight.in_flight += 1
        flight.unvouched += 1
        return Ticket(key, trial, flight.answers)

    def answered(self, ticket: Ticket) -> None:
        """The upstream answered this call (its head, not a failing status): every call of the key
        in flight is vouched for, and the failures counted so far are forgiven."""
        flight = self._flights.get(ticket.key)
        if flight is None or ticket.vouched:
            return
        flight.answers += 1
        flight.unvouched = 0
        ticket.vouched = True
        state = self._states.get(ticket.key)
        if state is not None and (ticket.trial or not state.open_until):
            self._close(ticket.key, state)
        self._wake(ticket.key, answered=True)

    def settle(self, ticket: Ticket, service: str, outcome: Outcome) -> None:
        """Record how an admitted call ended."""
        key, trial = ticket.key, ticket.trial
        self._land(ticket)
        state = self._states.get(key)
        if outcome is Outcome.NEUTRAL:
            if state is not None and trial:
                state.trial = False  # the trial told nothing: the next call may try
            self._wake(key)
            return
        if outcome is Outcome.SUCCESS:
            if state is not None:
                self._close(key, state)
            self._wake(key)
            return
        if state is None:
            state = self._states[key] = _State(service)
            self._bound()
        self._states.move_to_end(key)
        state.failures += 1
        if trial:
            state.trial = False
        if trial or state.failures >= self.threshold:
            if not state.open_until:
                metrics.BREAKER_OPEN.labels(service).inc()
                self._open[key[0]] = self._open.get(key[0], 0) + 1
            state.open_until = self.clock() + self.open_seconds
        self._wake(key)  # to answer 503 at once if it opened, or to take the place this call left

    def close_installation(self, installation_id: UUID) -> int:
        """Close every breaker of an installation (a healthy probe verdict); how many were held."""
        keys = [key for key in self._states if key[0] == installation_id]
        for key in keys:
            self._close(key, self._states[key])
            self._wake(key)
        return len(keys)

    def is_open(self, key: Key) -> bool:
        state = self._states.get(key)
        return state is not None and bool(state.open_until)

    def open_for_service(self, service: str) -> int:
        """This process's open (or half-open) breakers of a service's installations."""
        return sum(1 for state in self._states.values() if state.open_until and state.service == service)

    def open_count(self, installation_id: UUID) -> int:
        """This process's open (or half-open) breakers of an installation."""
        return self._open.get(installation_id, 0)

    def _places(self, state: _State | None) -> int:
        """How many unvouched calls may be in flight: the failures still to come before it opens."""
        return self.threshold - (state.failures if state is not None else 0)

    def _land(self, ticket: Ticket) -> None:
        flight = self._flights.get(ticket.key)
        if flight is None:
            return
        flight.in_flight -= 1
        if not ticket.vouched and ticket.answers == flight.answers:
            flight.unvouched -= 1
        if not flight.in_flight and not flight.waiters:
            del self._flights[ticket.key]

    def _wake(self, key: Key, answered: bool = False) -> None:
        """Wake the waiters: all of them after an answer (they go: the upstream is alive, and the
        calls sent after it count as unvouched again) or when the breaker opened (503); else as
        many as there are places (each looks again)."""
        flight = self._flights.get(key)
        if flight is None or not flight.waiters:
            return
        state = self._states.get(key)
        places = len(flight.waiters) if answered or (state is not None and state.open_until) \
            else self._places(state) - flight.unvouched
        while places > 0 and flight.waiters:
            waiter = flight.waiters.popleft()
            if not waiter.done():
                waiter.set_result(answered)
                places -= 1

    def _forget_waiter(self, key: Key, flight: _Flight, waiter: asyncio.Future[bool]) -> None:
        try:
            flight.waiters.remove(waiter)
        except ValueError:
            pass
        if not flight.in_flight and not flight.waiters and self._flights.get(key) is flight:
            del self._flights[key]

    def _close(self, key: Key, state: _State) -> None:
        if state.open_until:
            metrics.BREAKER_OPEN.labels(state.service).dec()
            left = self._open.get(key[0], 0) - 1
            if left > 0:
                self._open[key[0]] = left
            else:
                self._open.pop(key[0], None)
        del self._states[key]

    def _bound(self) -> None:
        while len(self._states) > self.max_breakers:
            key, state = next(iter(self._states.items()))
            self._close(key, state)
