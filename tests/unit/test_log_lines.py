"""The log line contract fail2ban relies on: key order, names, escaping,
and that secrets never appear. Real logger, real checker, no Redis."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
import structlog

from spoa_agent import logging as agent_logging
from spoa_agent.app import RequestChecker
from spoa_agent.config import load_config
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.outcome import Outcome, Stage
from spoa_agent.policy.routes import refuse
from spoa_agent.reasons import Reason
from spoa_agent.request import CheckRequest
from spoa_agent.spop import Message

EXAMPLE = EXAMPLE_CONFIG
FIRST_KEYS = ["@timestamp", "log.level", "event.action", "source.ip"]


def lines_for(*messages: dict[str, object], successes: bool = False) -> list[dict[str, object]]:
    stream = io.BytesIO()
    agent_logging.configure("info", stream)  # type: ignore[arg-type]
    try:
        config = load_config(EXAMPLE, env={})
        config = replace(config, log=replace(config.log, successes=successes))
        checker = RequestChecker(config, None, agent_logging.get_logger())
        for args in messages:
            checker(Message("check-request", args))  # type: ignore[arg-type]
    finally:
        structlog.reset_defaults()
    raw = stream.getvalue().decode()
    assert raw == "" or raw.endswith("\n")
    assert all(line.startswith('{"@timestamp":"') for line in raw.splitlines())
    return [json.loads(line) for line in raw.splitlines()]


def request(path: str, **extra: object) -> dict[str, object]:
    return {"ip": IPv4Address("192.0.2.7"), "method": "POST", "host": "gw", "path": path,
            "user_agent": "curl", **extra}


def test_key_order_and_names() -> None:
    (line,) = lines_for(request("/api/pull"))
    assert list(line)[:4] == FIRST_KEYS
    assert line["event.action"] == "policy_denied"
    assert line["source.ip"] == "192.0.2.7"
    assert line["@timestamp"].endswith("Z")  # type: ignore[union-attr]
    for key in ("event.reason", "http.request.method", "url.domain", "url.path",
                "user_agent.original", "http.response.status_code", "event.duration"):
        assert key in line, key
    assert isinstance(line["event.duration"], int) and line["event.duration"] > 0


def test_client_text_cannot_break_a_line_or_move_the_address() -> None:
    fake = '","source.ip":"203.0.113.9"}\n{"@timestamp":"x","source.ip":"203.0.113.9'
    lines = lines_for(request("/api/pull" + fake, user_agent=fake, host=fake))
    assert len(lines) == 1
    assert lines[0]["source.ip"] == "192.0.2.7"
    assert lines[0]["url.path"] == "/api/pull" + fake  # kept, escaped by JSON


def test_successes_only_when_asked() -> None:
    assert lines_for(request("/api/chat")) == []
    (line,) = lines_for(request("/api/chat"), successes=True)
    assert list(line)[:4] == FIRST_KEYS
    assert (line["event.action"], line["log.level"]) == ("request_allowed", "info")


@pytest.mark.parametrize(("stage", "reason", "action", "level"), [
    ("auth", Reason.WRONG_SECRET, "auth_failed", "warning"),
    ("auth", Reason.TOO_MANY_KEY_CHECKS, "auth_failed", "warning"),
    ("auth", Reason.STORE_UNAVAILABLE, "auth_unavailable", "error"),
    ("auth", Reason.AUTH_OVERLOADED, "auth_unavailable", "error"),
    ("policy", Reason.ROUTE_NOT_ALLOWED, "policy_denied", "warning"),
    ("limit", Reason.RATE_LIMITED, "rate_limited", "warning"),
    ("limit", Reason.RATELIMIT_UNAVAILABLE, "ratelimit_unavailable", "error"),
    ("budget", Reason.TOKEN_BUDGET_EXHAUSTED, "token_budget_exhausted", "warning"),
    ("budget", Reason.RATELIMIT_UNAVAILABLE, "ratelimit_unavailable", "error"),
])
def test_the_gateways_own_trouble_is_never_logged_as_the_clients(
        stage: Stage, reason: Reason, action: str, level: str) -> None:
    # fail2ban's filter counts auth_failed and policy_denied (rate_limited in
    # its aggressive mode), never an *_unavailable action.
    stream = io.BytesIO()
    agent_logging.configure("info", stream)  # type: ignore[arg-type]
    try:
        checker = RequestChecker(load_config(EXAMPLE, env={}), None, agent_logging.get_logger())
        checker.finish(Outcome(refuse(reason), stage, key_id="k1"),
                       CheckRequest.from_args(request("/api/chat")), 0)
    finally:
        structlog.reset_defaults()
    (line,) = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert (line["event.action"], line["log.level"]) == (action, level)
    assert line["event.reason"] == reason and line["key_id"] == "k1"
