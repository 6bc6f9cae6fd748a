"""Rate limit specifications: `N/PERIOD[,burst=B]`, e.g. `60/m`, `100/5m,burst=20`,
and token budgets: `N[k|M|G]/PERIOD`, e.g. `200k/d`.

Semantics (GCRA): a fresh key admits exactly `burst` requests at once
(default burst = N), then one every PERIOD/N; in the steady state that is N
per PERIOD. Refused requests are not charged. Pure code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(s|m|h|d)\s*(?:,\s*burst\s*=\s*(\d+)\s*)?")
_BUDGET = re.compile(r"\s*(\d+)\s*([kMG]?)\s*/\s*(\d*)\s*(s|m|h|d)\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MULTIPLES = {"": 1, "k": 1_000, "M": 1_000_000, "G": 1_000_000_000}
# Scopes of the limits that are token budgets: checked before a request but
# charged after it, by the tokens its answer reported (usage/ingest.py).
TOKEN_SCOPES: Final = frozenset({"tokens", "output_tokens"})


class OnRedisError(Enum):
    OPEN = "open"  # admit when Redis cannot answer
    CLOSED = "closed"  # refuse with 503


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period: float  # seconds
    burst: int
    # Derived once here, not per request: the limiter sends them on every call.
    interval_us: int = field(init=False, compare=False, repr=False)
    tolerance_us: int = field(init=False, compare=False, repr=False)
    batch_args: str = field(init=False, compare=False, repr=False)  # gcra_batch.lua's pair

    def __post_init__(self) -> None:
        interval = max(1, round(self.period * 1_000_000 / self.count))
        tolerance = interval * self.burst
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", tolerance)
        object.__setattr__(self, "batch_args", f"{interval} {tolerance}")

    def policy(self) -> str:
        """The IETF RateLimit-Policy parameters: quota and window in seconds."""
        return f"q={self.count};w={round(self.period)}"

    def __str__(self) -> str:
        return f"{self.count}/{round(self.period)}s" + (
            f",burst={self.burst}" if self.burst != self.count else "")


def parse_rate(text: str) -> Rate:
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a rate like 60/m, 100/5m or 60/m,burst=10, got {text!r}")
    count, multiple, unit, burst = match.groups()
    n = int(count)
    period = int(multiple or 1) * _UNIT_SECONDS[unit]
    if n < 1 or period < 1:
        raise ValueError(f"a rate needs at least 1 request per period, got {text!r}")
    b = int(burst) if burst is not None else n
    if b < 1:
        raise ValueError(f"burst must be at least 1, got {text!r}")
    return Rate(n, float(period), b)


def parse_token_budget(text: str) -> Rate:
    """A token budget: `N[k|M|G]/PERIOD`; the whole budget may be used at once."""
    match = _BUDGET.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a token budget like 1000/d, 200k/d or 1M/7d, got {text!r}")
    count, multiple, periods, unit = match.groups()
    n = int(count) * _MULTIPLES[multiple]
    period = int(periods or 1) * _UNIT_SECONDS[unit]
    if n < 1 or period < 1:
        raise ValueError(f"a token budget needs at least 1 token per period, got {text!r}")
    if n > period * 1_000_000:
        raise ValueError(f"at most 1,000,000 tokens a second, got {text!r}")
    return Rate(n, float(period), n)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit that applies to a request: its Redis key and its rate."""

    scope: str  # "key", "ip", "route", "global": named in logs and headers
    key: str
    rate: Rate
    on_redis_error: OnRedisError = OnRedisError.CLOSED
    # The key as a RESP bulk string, encoded once here: the limiter packs its
    # script call from these instead of encoding every key of every request.
    key_arg: bytes = field(init=False, compare=False, repr=False)
    # gcra_batch.lua's pair for this limit: a token budget is checked (is at
    # least one token left?) but not charged, which an interval of 0 says.
    batch_args: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key = self.key.encode()
        object.__setattr__(self, "key_arg", b"$%d\r\n%s\r\n" % (len(key), key))
        rate = self.rate
        object.__setattr__(self, "batch_args", f"0 {rate.tolerance_us - rate.interval_us}"
                           if self.is_budget else rate.batch_args)

    @property
    def is_budget(self) -> bool:
        return self.scope in TOKEN_SCOPES
