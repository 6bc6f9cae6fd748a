"""One typed outcome per request, rendered once into SPOP variables.

The check-request handler ends every request in an Outcome; render() turns
it into the txn.spoa.* variables haproxy.cfg decides on. The log line, the
metrics and `spoa-agent check` read the Outcome itself, never the variables.
"""

from __future__ import annotations

import functools
from typing import Final, Literal

from spoa_agent.auth.principal import Principal
from spoa_agent.policy.routes import Decision
from spoa_agent.ratelimit.limiter import UNLIMITED, Verdict
from spoa_agent.ratelimit.limits import Limit
from spoa_agent.record import Record
from spoa_agent.spop import Action, Encoded, SetVar
from spoa_agent.spop.frames import encode_action

# The step that decided: who the caller is, what it may do, how often, how
# many LLM tokens.
Stage = Literal["auth", "policy", "limit", "budget", "allowed"]
_OWN_LOGIN: Final = Encoded.of(SetVar("own_login", True)).data


class Outcome(Record):
    """How one request ended: what the handler logs, counts and renders."""

    __slots__ = ("budget", "decision", "key_id", "max_in_flight", "principal", "stage",
                 "verdict")

    def __init__(self, decision: Decision, stage: Stage, principal: Principal | None = None,
                 key_id: str = "", verdict: Verdict = UNLIMITED, max_in_flight: int = 0,
                 budget: Limit | None = None) -> None:
        self.decision = decision  # allowed, status, reason, rule, detail
        self.stage = stage
        self.principal = principal
        self.key_id = key_id  # the key a refused credential named
        self.verdict = verdict  # the limits' figures, shown to the client
        self.max_in_flight = max_in_flight  # requests at once for this key, counted by HAProxy
        self.budget = budget  # the token budget its answer's usage is charged to

    def _fields(self) -> tuple[object, ...]:
        return (self.decision, self.stage, self.principal, self.key_id, self.verdict,
                self.max_in_flight, self.budget)


def render(outcome: Outcome) -> tuple[Action, ...]:
    """The variables under txn.<var-prefix>.* (spoe-agent.conf: spoa).

    One Encoded action: the bytes of the variables, joined from caches of
    their few values (decisions, principals, limits, small figures), so an
    ACK copies them instead of encoding each variable of each request."""
    decision = outcome.decision
    route = decision.route
    head = decision_vars(decision.allowed, decision.status, decision.reason, decision.rule,
                         decision.detail, route is not None and route.public)
    principal, verdict = outcome.principal, outcome.verdict
    if principal is None and verdict.limit is None:
        return _decision_only(head)  # no caller, no limits: the whole answer cached
    parts = [head]
    if principal is not None:
        parts.append(principal_vars(principal.name, principal.id, outcome.max_in_flight))
    if verdict.limit is not None:
        # What the client is told of its limit (haproxy.cfg turns it into
        # headers): the limit's own part, then the figures that move.
        rate = verdict.limit.rate
        parts.append(_limit_vars(verdict.limit.scope, rate.count, round(rate.period)))
        parts.append(_int_var("rl_remaining", verdict.remaining))
        parts.append(_int_var("rl_reset", verdict.reset))
        if verdict.retry_after:
            parts.append(_int_var("retry_after", verdict.retry_after))
    if outcome.budget is not None and decision.allowed:
        parts.append(budget_var(outcome.budget))
    return (Encoded(b"".join(parts)),)


@functools.lru_cache(maxsize=4096)
def budget_var(budget: Limit) -> bytes:
    """Where lua/spoa_usage.lua's record of the answer charges its tokens:
    the budget's Redis key, microseconds per token, and whether the input
    counts (1) or only the output (0). The agent that admitted the request
    decides this; the usage listener charges what the record says."""
    counts_input = 0 if budget.scope == "output_tokens" else 1
    return Encoded.of(SetVar("budget", f"{budget.key} {budget.rate.interval_us} "
                                       f"{counts_input}")).data


# The paths that list models (OpenAI's and Anthropic's, Ollama's): for a key
# limited to some models, the gateway answers them with those models.
MODEL_LISTS: Final = frozenset({"/v1/models", "/api/tags"})


@functools.lru_cache(maxsize=1024)
def models_var(models: frozenset[str]) -> Encoded:
    """The key's models for lua/spoa_deny.lua's list, one per line."""
    return Encoded.of(SetVar("models", "\n".join(sorted(models))))


@functools.lru_cache(maxsize=1024)
def decision_vars(allowed: bool, status: int, reason: str, rule: str, detail: str = "",
                  own_login: bool = False) -> bytes:
    """What haproxy.cfg decides on. Cached, and encoded once: decisions are
    few (rule, outcome) pairs and their variables immutable. `own_login`:
    haproxy.cfg keeps the credentials of a route whose upstream does its own
    login."""
    data = Encoded.of(SetVar("decision", "allow" if allowed else "deny"),
                      SetVar("status", status), SetVar("reason", str(reason)),
                      SetVar("rule", rule)).data
    if detail:
        data += encode_action(SetVar("detail", detail))
    return data + _OWN_LOGIN if own_login else data


@functools.lru_cache(maxsize=1024)
def _decision_only(head: bytes) -> tuple[Action, ...]:
    return (Encoded(head),)


@functools.lru_cache(maxsize=4096)
def principal_vars(name: str, principal_id: str, max_in_flight: int) -> bytes:
    """Who asked (haproxy.cfg passes `principal` upstream as X-Spoa-Principal),
    and how many requests at once HAProxy lets it make (0: no cap). Keyed
    by the values, which hash faster than the Principal."""
    head = Encoded.of(SetVar("principal", name), SetVar("principal_id", principal_id)).data
    return head + _int_var("max_in_flight", max_in_flight) if max_in_flight else head


@functools.lru_cache(maxsize=1024)
def _limit_vars(scope: str, count: int, window: int) -> bytes:
    return Encoded.of(SetVar("rl_scope", scope), SetVar("rl_limit", count),
                      SetVar("rl_window", window)).data


@functools.lru_cache(maxsize=16384)
def _int_var(name: str, value: int) -> bytes:
    return Encoded.of(SetVar(name, value)).data
