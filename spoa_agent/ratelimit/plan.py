"""Which limits apply to a request: a pure plan, checked later in Redis."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final, Protocol

from spoa_agent.ratelimit.limiter import limit_key
from spoa_agent.ratelimit.limits import Limit, Rate, parse_rate, parse_token_budget
from spoa_agent.ratelimit.settings import RateLimitConfig

_cached_rate: Final = functools.lru_cache(maxsize=1024)(parse_rate)
_cached_budget: Final = functools.lru_cache(maxsize=1024)(parse_token_budget)


class Caller(Protocol):
    """A key or JWT subject as the limits see it (auth's Principal): its own
    rate and token budgets, if it has them."""

    @property
    def kind(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def rate(self) -> str | None: ...
    @property
    def tokens(self) -> str | None: ...
    @property
    def model_tokens(self) -> tuple[tuple[str, str], ...]: ...


def plan_limits(settings: RateLimitConfig, caller: Caller | None, ip: str, rule: str,
                route_rate: Rate | None, model: str = "") -> tuple[Limit, ...]:
    """Every limit that applies: per caller (a key or a JWT subject, with its
    own rate if it has one), per client address, per route (`rule`, when its
    route has a rate), global; last, the caller's token budget for `model`
    (the body's, when the policy read it)."""
    limits = []
    if caller is not None:
        key = limit_key(caller.kind, caller.id)
        caller_rate = caller.rate
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
        budget = _budget(settings, caller, model)
        if budget is not None:
            limits.append(budget)
    return tuple(limits)


def _budget(settings: RateLimitConfig, caller: Caller, model: str) -> Limit | None:
    """The one token budget a request is checked and charged against: the
    caller's own for its model, the config's for the model, the caller's own,
    the config's default, in that order."""
    name = f"{caller.kind}:{caller.id}"
    spec = (dict(caller.model_tokens).get(model) or settings.tokens_per_model.get(model)) \
        if model else None
    if spec:
        name += f":model:{_model_name(model)}"
    else:
        spec = caller.tokens or settings.tokens_per_key
        if not spec:
            return None
    # Like a rate, a budget names its state (a changed budget starts afresh),
    # and so does what it counts: all tokens, or only the answer's.
    scope = "output_tokens" if settings.tokens_output_only else "tokens"
    return Limit(scope, limit_key(scope, f"{name}@{spec}"), _cached_budget(spec),
                 settings.on_redis_error)


_PLAIN_MODEL: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def _model_name(model: str) -> str:
    """The model as part of a Redis key: itself when plain, else a digest
    (a model name is the client's text)."""
    if _PLAIN_MODEL.fullmatch(model):
        return model
    return "#" + hashlib.blake2b(model.encode(), digest_size=12).hexdigest()
