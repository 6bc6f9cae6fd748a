"""The limiter's own settings: which limits apply, and what Redis trouble does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spoa_agent.ratelimit.limits import OnRedisError, Rate


@dataclass(frozen=True, slots=True)
class LimitSpec:
    rate: Rate
    on_redis_error: OnRedisError


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    per_key: LimitSpec | None = None  # keys and JWT subjects without their own rate
    per_ip: LimitSpec | None = None
    global_: LimitSpec | None = None
    # Requests in flight at once per key, for keys without their own; 0: none.
    # Counted by HAProxy (a stick table), per HAProxy node.
    per_key_in_flight: int = 0
    on_redis_error: OnRedisError = OnRedisError.CLOSED
    # Redis on the request path: past this, the limit's on_redis_error decides.
    # A local Redis answers in well under 1 ms; 100 ms turned a VM's brief
    # stall into 503s, and 250 ms still leaves most of the handler's 900 ms.
    redis_timeout: float = 0.25
    # LLM tokens per key (and JWT subject) without a budget of its own,
    # charged from the usage the upstream reports ([usage] must be on). As
    # configured ("1M/d", checked by the loader), as a key's own are stored:
    # the text names the budget's state, plan.py parses the one that applies.
    tokens_per_key: str | None = None
    tokens_output_only: bool = False  # count only the answer's tokens
    # model -> budget, for keys without their own for that model; it
    # replaces tokens_per_key for that model's requests.
    tokens_per_model: Mapping[str, str] = field(default_factory=dict)
