"""How the active waits out a store that refuses writes for a while (busy, disk full)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from engine.errors import StoreRetryableError

if TYPE_CHECKING:
    from engine.store.intents import Intent

#: What to write in the first transaction that succeeds after a fault: given how long the fault
#: lasted (seconds), the fault and how many writes failed meanwhile (the `store_error` event).
RecoveryIntents = Callable[[float, StoreRetryableError, int], Sequence["Intent"]]


class StoreHealth:
    """Backoff and log-once for retryable store faults. Pure policy: callers pass the time."""

    def __init__(self, first_delay: float = 0.1, max_delay: float = 2.0) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.fault: StoreRetryableError | None = None
        self.failures = 0  #: failed writes so far (a writer that waited for the lock compares it)
        self.since = 0.0
        self.retry_at = 0.0
        self._delay = 0.0
        self.outage_failures = 0  #: failed writes since the current fault began
        self.on_recovery: RecoveryIntents | None = None  #: set by the active (its event routing)

    @property
    def failing(self) -> bool:
        return self.fault is not None

    def failed(self, exc: StoreRetryableError, now: float) -> bool:
        """Note a failed write; True when it is news (a fault begins or changes kind): log it."""
        news = self.fault is None or self.fault.kind != exc.kind
        self.failures += 1
        if self.fault is None:
            self.since = now
            self.outage_failures = 0
        self.outage_failures += 1
        self.fault = exc
        self._delay = self.first_delay if self._delay == 0 else min(self.max_delay, self._delay * 2)
        self.retry_at = now + self._delay
        return news

    def recovery_intents(self, now: float) -> list[Intent]:
        """The intents to add to a write attempted during a fault: if it succeeds, it is the first
        that did, and they say so in its own transaction (none when healthy)."""
        if self.fault is None or self.on_recovery is None:
            return []
        return list(self.on_recovery(now - self.since, self.fault, self.outage_failures))

    def succeeded(self, now: float) -> float | None:
        """Note a write that went through; returns how long the fault lasted if one just ended."""
        if self.fault is None:
            return None
        lasted = now - self.since
        self.fault = None
        self._delay = 0.0
        self.retry_at = 0.0
        return lasted

    def wait(self, now: float) -> float:
        """Seconds until the next write should be tried (0 when healthy)."""
        return max(0.0, self.retry_at - now) if self.fault is not None else 0.0
