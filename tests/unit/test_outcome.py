"""An Outcome rendered for HAProxy, read back through the codec as HAProxy
reads it: every variable haproxy.cfg and the Lua use, with its type."""

from __future__ import annotations

from dataclasses import replace

from spoa_agent.auth.principal import Principal
from spoa_agent.outcome import Outcome, render
from spoa_agent.policy import Route, RouteTable
from spoa_agent.policy.routes import refuse
from spoa_agent.ratelimit.limiter import Verdict
from spoa_agent.ratelimit.limits import Limit, parse_rate, parse_token_budget
from spoa_agent.reasons import Reason
from spoa_agent.spop import Ack, Encoded, SetVar, decode_frame, encode_frame

CHAT = RouteTable((Route("/api/chat", frozenset({"POST"}), "chat"),
                   Route("/", frozenset({"GET"}), "webui", prefix=True, public=True,
                         host="chat.example.com")))
KEY = Principal("api_key", "k1", "laptop", max_in_flight=2)


def variables(outcome: Outcome) -> dict[str, object]:
    ack = decode_frame(encode_frame(Ack(7, 1, render(outcome)))[4:])
    assert isinstance(ack, Ack)
    return {action.name: action.value for action in ack.actions if isinstance(action, SetVar)}


def test_an_allowed_request_with_its_limit() -> None:
    limit = Limit("key", "spoa:rl:x", parse_rate("60/m"))
    outcome = Outcome(CHAT.decide("POST", "/api/chat"), "allowed", KEY,
                      verdict=Verdict(True, 200, None, limit, 59, 1), max_in_flight=2)
    assert variables(outcome) == {
        "decision": "allow", "status": 200, "reason": "allowed", "rule": "chat",
        "principal": "laptop", "principal_id": "k1", "max_in_flight": 2,
        "rl_scope": "key", "rl_limit": 60, "rl_window": 60, "rl_remaining": 59, "rl_reset": 1}


def test_a_refusal_names_its_reason_detail_and_wait() -> None:
    limit = Limit("ip", "spoa:rl:y", parse_rate("10/s"))
    refused = Outcome(refuse(Reason.RATE_LIMITED, "chat"), "limit", KEY,
                      verdict=Verdict(False, 429, Reason.RATE_LIMITED, limit, 0, 3, 2))
    got = variables(refused)
    assert (got["decision"], got["status"], got["reason"], got["retry_after"]) == (
        "deny", 429, "rate_limited", 2)
    model = Outcome(refuse(Reason.MODEL_NOT_ALLOWED, "chat", "qwen"), "policy", KEY)
    assert variables(model)["detail"] == "qwen"


def test_an_admitted_request_names_the_budget_its_answer_is_charged_to() -> None:
    budget = Limit("tokens", "spoa:rl:{spoa-rl}:tokens:api_key:k1@1000/d",
                   parse_token_budget("1000/d"))
    admitted = Outcome(CHAT.decide("POST", "/api/chat"), "allowed", KEY, budget=budget)
    assert variables(admitted)["budget"] == \
        "spoa:rl:{spoa-rl}:tokens:api_key:k1@1000/d 86400000 1"
    output_only = Outcome(CHAT.decide("POST", "/api/chat"), "allowed", KEY,
                          budget=replace(budget, scope="output_tokens"))
    assert str(variables(output_only)["budget"]).endswith(" 0")
    # A refused request reaches no upstream: nothing to charge.
    refused = Outcome(refuse(Reason.TOKEN_BUDGET_EXHAUSTED, "chat"), "budget", KEY,
                      verdict=Verdict(False, 429, Reason.TOKEN_BUDGET_EXHAUSTED, budget, 0,
                                      90, 90), budget=budget)
    got = variables(refused)
    assert "budget" not in got
    assert (got["reason"], got["retry_after"], got["rl_scope"], got["rl_limit"]) == (
        "token_budget_exhausted", 90, "tokens", 1000)


def test_an_own_login_route_keeps_its_credentials() -> None:
    own = Outcome(CHAT.decide("GET", "/", "chat.example.com"), "allowed")
    assert variables(own)["own_login"] is True


def test_encoded_actions_are_the_bytes_of_the_actions() -> None:
    ack = Ack(1, 2, (Encoded.of(SetVar("a", 1), SetVar("b", "x")), SetVar("c", True)))
    decoded = decode_frame(encode_frame(ack)[4:])
    assert decoded == Ack(1, 2, (SetVar("a", 1), SetVar("b", "x"), SetVar("c", True)))
