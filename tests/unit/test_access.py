"""Access rules beyond the path, as a table: route + caller + body -> Decision.
Pure code: no HAProxy, no Redis."""

from __future__ import annotations

import pytest

from spoa_agent.auth.principal import Principal
from spoa_agent.policy import Route, RouteTable
from spoa_agent.policy.access import check_access
from spoa_agent.policy.body import BodyFacts
from spoa_agent.ratelimit.limits import OnRedisError, parse_rate
from spoa_agent.ratelimit.plan import plan_limits
from spoa_agent.ratelimit.settings import LimitSpec, RateLimitConfig
from spoa_agent.reasons import Reason

TABLE = RouteTable((
    Route("/api/chat", frozenset({"POST"}), "chat", model_in_body=True),
    Route("/small", frozenset({"POST"}), "small", max_body=10),
    Route("/admin", frozenset({"POST"}), "admin", scopes=frozenset({"admin"}),
          rate=parse_rate("5/m")),
    Route("/v1/models/{model}", frozenset({"GET"}), "model"),
))
ANYONE = Principal("api_key", "k1", "laptop")
ONE_MODEL = Principal("api_key", "k2", "kid", models=frozenset({"small-model"}))
CHAT_ONLY = Principal("api_key", "k3", "chat-only", routes=frozenset({"chat"}))
ADMIN = Principal("api_key", "k4", "ops", scopes=frozenset({"admin"}))


def body(data: bytes, length: str | None = "auto", **framing: str) -> BodyFacts:
    return BodyFacts("POST", str(len(data)) if length == "auto" else length,
                     framing.get("te"), framing.get("ce"), data)


@pytest.mark.parametrize(("path", "principal", "expected"), [
    ("/v1/models/small-model", ONE_MODEL, "allowed"),
    ("/v1/models/big-model", ONE_MODEL, Reason.MODEL_NOT_FOUND),
    ("/v1/models/Small-Model", ONE_MODEL, Reason.MODEL_NOT_FOUND),  # names are exact
    ("/v1/models/big-model", ANYONE, "allowed"),  # a key without a list sees every model
    ("/v1/models/big-model", None, "allowed"),
])
def test_a_key_limited_to_some_models_finds_no_other(path: str, principal: Principal | None,
                                                     expected: str) -> None:
    decision = check_access(TABLE.decide("GET", path), principal, body(b""), path)
    assert decision.reason == expected
    if expected != "allowed":
        assert (decision.status, decision.detail) == (404, path.rsplit("/", 1)[1])


@pytest.mark.parametrize(("path", "principal", "facts", "expected", "detail"), [
    ("/api/chat", ANYONE, body(b'{"model":"any"}'), "allowed", ""),
    ("/api/chat", ONE_MODEL, body(b'{"model":"small-model"}'), "allowed", ""),
    ("/api/chat", ONE_MODEL, body(b'{"model":"big-model"}'), Reason.MODEL_NOT_ALLOWED,
     "big-model"),
    ("/api/chat", ONE_MODEL, body(b'{"model":"small-model","Model":"big"}'),
     Reason.AMBIGUOUS_BODY, ""),
    ("/api/chat", ONE_MODEL, body(b"{}"), Reason.MODEL_MISSING, ""),
    ("/api/chat", ONE_MODEL, body(b'{"model":"small-model"}', length="99999"),
     Reason.BODY_TOO_LARGE_FOR_MODEL_CHECK, ""),
    ("/api/chat", ONE_MODEL, body(b'{"model":"small-model"}', length=None, te="chunked"),
     Reason.LENGTH_REQUIRED, ""),
    ("/api/chat", ONE_MODEL, body(b"\x1f\x8b", ce="gzip"), Reason.ENCODED_BODY, ""),
    # A key without a model list never pays for the body.
    ("/api/chat", ANYONE, body(b"", length=None, te="chunked"), "allowed", ""),
    ("/small", None, body(b"0123456789"), "allowed", ""),
    ("/small", None, body(b"0123456789x"), Reason.BODY_TOO_LARGE, "10"),
    ("/small", None, body(b"x", length=None, te="chunked"), Reason.LENGTH_REQUIRED, ""),
    ("/small", CHAT_ONLY, body(b"x"), Reason.ROUTE_NOT_ALLOWED_FOR_KEY, ""),
    ("/admin", ANYONE, body(b""), Reason.MISSING_SCOPE, "admin"),
    ("/admin", ADMIN, body(b""), "allowed", ""),
])
def test_access(path: str, principal: Principal | None, facts: BodyFacts, expected: str,
                detail: str) -> None:
    decision = check_access(TABLE.decide("POST", path), principal, facts, path)
    assert (decision.reason, decision.detail) == (expected, detail)
    if expected != "allowed":
        assert isinstance(decision.reason, Reason)
        assert decision.status == decision.reason.status and not decision.allowed


@pytest.mark.parametrize(("facts", "expected", "model"), [
    (body(b'{"model":"llama3.1:70b"}'), "allowed", "llama3.1:70b"),
    # Read two ways, the request could be charged to one model's budget and
    # answered by another: refused, as for a model list.
    (body(b'{"model":"llama3.2:1b","Model":"llama3.1:70b"}'), Reason.AMBIGUOUS_BODY, ""),
    (body(b'{"model":"x"}', length="99999"), Reason.BODY_TOO_LARGE_FOR_MODEL_CHECK, ""),
    (body(b'{"model":"x"}', length=None, te="chunked"), Reason.LENGTH_REQUIRED, ""),
    # No model named: the key's own budget applies.
    (body(b'{"prompt":"hi"}'), "allowed", ""),
])
def test_budgets_per_model_read_the_body_s_model(facts: BodyFacts, expected: str,
                                                 model: str) -> None:
    decision = check_access(TABLE.decide("POST", "/api/chat"), ANYONE, facts, "/api/chat",
                            model_budgets=True)
    assert (decision.reason, decision.model) == (expected, model)
    # Without budgets per model, nothing is read, and the model stays unknown.
    unread = check_access(TABLE.decide("POST", "/api/chat"), ANYONE, facts, "/api/chat")
    assert (unread.reason, unread.model) == ("allowed", "")


def test_limits_planned_for_key_address_route_and_everyone() -> None:
    spec = LimitSpec(parse_rate("60/m"), OnRedisError.OPEN)
    settings = RateLimitConfig(per_key=spec, per_ip=spec, global_=spec)
    plan = plan_limits(settings, Principal("api_key", "k4", "k4"), "192.0.2.1", "admin",
                       parse_rate("5/m"))
    assert [(limit.scope, limit.key.rsplit(":", 1)[-1]) for limit in plan] == [
        ("key", "k4"), ("ip", "192.0.2.1"), ("route", "admin"), ("global", "all")]
    # A key's own rate: its own state, and the gateway's failure mode.
    first = plan_limits(settings, Principal("api_key", "k5", "k5", rate="2/m"), "", "small",
                        None)[0]
    assert (first.scope, first.key.rsplit(":", 1)[-1], first.rate.count,
            first.on_redis_error) == ("key", "k5@2/m", 2, OnRedisError.CLOSED)
