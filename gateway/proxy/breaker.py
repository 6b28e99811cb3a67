"""Passive circuit breakers, per process, per installation and upstream origin (contract
revision 3, "Plugin health").

GATEWAY_BREAKER_FAILURES consecutive failures of the upstream open the breaker for
GATEWAY_BREAKER_OPEN_SECONDS: calls then answer 503 with `Retry-After` at once, without touching
the upstream (nor waiting for a pooled connection). After the open time one call is let through
(the trial); its success closes the breaker, its failure opens it again. Only the upstream's
failures count (FAILURES below), never the caller's. With N processes a dead upstream sees at
most N x GATEWAY_BREAKER_FAILURES calls before every breaker is open.

Only breakers that have seen a failure are held, at most MAX_BREAKERS (the least recently
failing dropped first): an outsider cannot grow this by calling many installations.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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


class BreakerOpen(ServiceUnavailable):
    def __init__(self, retry_after: int) -> None:
        super().__init__("The plugin is failing: calls to it are paused for a moment", retry_after=retry_after)


class Breakers:
    def __init__(self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_breakers: int = MAX_BREAKERS) -> None:
        self.threshold = failures
        self.open_seconds = open_seconds
        self.clock = clock
        self.max_breakers = max_breakers
        self._states: OrderedDict[Key, _State] = OrderedDict()
        self._open: dict[UUID, int] = {}  # installation id → its open breakers (for the API)

    def admit(self, key: Key) -> bool:
        """Raise BreakerOpen while the breaker is open; True when this call is the trial."""
        state = self._states.get(key)
        if state is None or not state.open_until:
            return False
        now = self.clock()
        if now < state.open_until:
            raise BreakerOpen(max(1, math.ceil(state.open_until - now)))
        if state.trial:  # half-open, and another call is the trial
            raise BreakerOpen(1)
        state.trial = True
        return True

    def settle(self, key: Key, service: str, outcome: Outcome, trial: bool) -> None:
        """Record how an admitted call ended (`trial`: what admit returned for it)."""
        state = self._states.get(key)
        if outcome is Outcome.NEUTRAL:
            if state is not None and trial:
                state.trial = False  # the trial told nothing: the next call may try
            return
        if outcome is Outcome.SUCCESS:
            if state is not None:
                self._close(key, state)
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

    def close_installation(self, installation_id: UUID) -> int:
        """Close every breaker of an installation (a healthy probe verdict); how many were held."""
        keys = [key for key in self._states if key[0] == installation_id]
        for key in keys:
            self._close(key, self._states[key])
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
