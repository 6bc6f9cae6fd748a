"""Which limits apply to a request: a pure plan, checked later in Redis."""

from __future__ import annotations

import functools

from spoa_agent.auth.principal import Principal
from spoa_agent.policy.routes import Decision
from spoa_agent.ratelimit.limiter import limit_key
from spoa_agent.ratelimit.limits import Limit, parse_rate
from spoa_agent.ratelimit.settings import RateLimitConfig

_cached_rate = functools.lru_cache(maxsize=1024)(parse_rate)


def plan_limits(settings: RateLimitConfig, principal: Principal | None, ip: str,
                decision: Decision) -> tuple[Limit, ...]:
    """Every limit that applies: per key, per client address, per route, global."""
    limits = []
    if principal is not None:
        key = limit_key(principal.kind, principal.id)
        if principal.rate:
            # Its own rate names its own state: a key whose rate is changed
            # starts afresh under the new one, instead of waiting out what it
            # was charged under the old (a request at 120/m leaves 0.5 s of
            # state, which a new 500/s would read as 250 requests' worth).
            limits.append(Limit("key", f"{key}@{principal.rate}",
                                _cached_rate(principal.rate), settings.on_redis_error))
        elif settings.per_key is not None:
            limits.append(Limit("key", key, settings.per_key.rate,
                                settings.per_key.on_redis_error))
    if settings.per_ip is not None and ip:
        limits.append(Limit("ip", limit_key("ip", ip), settings.per_ip.rate,
                            settings.per_ip.on_redis_error))
    if decision.route is not None and decision.route.rate is not None:
        limits.append(Limit("route", limit_key("route", decision.rule), decision.route.rate,
                            settings.on_redis_error))
    if settings.global_ is not None:
        limits.append(Limit("global", limit_key("global", "all"), settings.global_.rate,
                            settings.global_.on_redis_error))
    return tuple(limits)
