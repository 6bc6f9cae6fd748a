"""A circuit breaker: after a few failures in a row, stop calling for a while.

While open, a dead Redis costs nothing per request; after `cooldown` one
call is let through, and its success closes the breaker again. Pure: the
caller passes the time.
"""

from __future__ import annotations


class CircuitBreaker:
    def __init__(self, failures_to_open: int = 3, cooldown: float = 1.0) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self._trial = False

    @property
    def state(self) -> str:
        return "open" if self.failures >= self.failures_to_open else "closed"

    def allow(self, now: float) -> bool:
        if self.failures < self.failures_to_open:
            return True
        if now >= self.open_until and not self._trial:
            self._trial = True  # one call tries Redis again; the rest wait
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._trial = False

    def failure(self, now: float) -> None:
        self.failures += 1
        self._trial = False
        if self.failures >= self.failures_to_open:
            self.open_until = now + self.cooldown
