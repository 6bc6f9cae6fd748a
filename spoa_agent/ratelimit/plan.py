"""Which limits apply to a request: a pure plan, checked later in Redis."""

from __future__ import annotations

import functools

from spoa_agent.ratelimit.limiter import limit_key
from spoa_agent.ratelimit.limits import Limit, Rate, parse_rate, parse_token_budget
from spoa_agent.ratelimit.settings import RateLimitConfig

_cached_rate = functools.lru_cache(maxsize=1024)(parse_rate)
_cached_budget = functools.lru_cache(maxsize=1024)(parse_token_budget)


def plan_limits(settings: RateLimitConfig, caller: tuple[str, str] | None,
                caller_rate: str | None, ip: str, rule: str,
                route_rate: Rate | None, caller_tokens: str | None = None) -> tuple[Limit, ...]:
    """Every limit that applies: per caller (kind and id of a key or a JWT
    subject, with its own rate if it has one), per client address, per route
    (`rule`, when its route has a rate), global; last, the caller's token
    budget (its own, `caller_tokens`, or the default)."""
    limits = []
    if caller is not None:
        key = limit_key(*caller)
        if caller_rate:
            # Its own rate names its own state: a key whose rate is changed
            # starts afresh under the new one, instead of waiting out what it
            # was charged under the old (a request at 120/m leaves 0.5 s of
            # state, which a new 500/s would read as 250 requests' worth).
            limits.append(Limit("key", f"{key}@{caller_rate}", _cached_rate(caller_rate),
                                settings.on_redis_error))
        elif settings.per_key is not None:
            limits.append(Limit("key", key, settings.per_key.rate,
                                settings.per_key.on_redis_error))
    if settings.per_ip is not None and ip:
        limits.append(Limit("ip", limit_key("ip", ip), settings.per_ip.rate,
                            settings.per_ip.on_redis_error))
    if route_rate is not None:
        limits.append(Limit("route", limit_key("route", rule), route_rate,
                            settings.on_redis_error))
    if settings.global_ is not None:
        limits.append(Limit("global", limit_key("global", "all"), settings.global_.rate,
                            settings.global_.on_redis_error))
    if caller is not None:
        budget = _budget(settings, caller, caller_tokens)
        if budget is not None:
            limits.append(budget)
    return tuple(limits)


def _budget(settings: RateLimitConfig, caller: tuple[str, str],
            caller_tokens: str | None) -> Limit | None:
    if caller_tokens:
        spec, rate = caller_tokens, _cached_budget(caller_tokens)
    elif settings.tokens_per_key is not None:
        spec, rate = settings.tokens_per_key_text, settings.tokens_per_key
    else:
        return None
    # Like a rate, a budget names its state (a changed budget starts afresh),
    # and so does what it counts: all tokens, or only the answer's.
    scope = "output_tokens" if settings.tokens_output_only else "tokens"
    kind, name = caller
    return Limit(scope, limit_key(scope, f"{kind}:{name}@{spec}"), rate,
                 settings.on_redis_error)
