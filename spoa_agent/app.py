"""The agent as HAProxy uses it: the `check-request` SPOE message and its answer.

This is where the server meets the policy: decode the message's arguments,
ask the policy, turn the Decision into variables, log what was refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from spoa_agent.config import Config
from spoa_agent.policy import Decision, RouteTable
from spoa_agent.server import Actions, Agent
from spoa_agent.spop import Message, SetVar, Value

CHECK_REQUEST = "check-request"


@functools.lru_cache(maxsize=1024)
def decision_vars(decision: Decision) -> Actions:
    """Variables under txn.<var-prefix>.* that haproxy.cfg decides on.

    Cached: a decision is one of few (rule, outcome) pairs, and its variables
    are immutable, so each is built once.
    """
    return (
        SetVar("decision", "allow" if decision.allowed else "deny"),
        SetVar("status", decision.status),
        SetVar("reason", decision.reason),
        SetVar("rule", decision.rule),
    )


def _text(args: Mapping[str, Value], key: str) -> str:
    value = args.get(key)
    return value if isinstance(value, str) else ""


class RequestChecker:
    def __init__(self, config: Config, log: Any) -> None:
        self.routes = RouteTable(config.routes)
        self.log = log

    def __call__(self, message: Message) -> Actions:
        args = message.args
        method = _text(args, "method")
        path = _text(args, "path")
        decision = self.routes.decide(method, path)
        if not decision.allowed:
            self.log.warning(
                "policy_denied",
                ip=args.get("ip"),
                reason=decision.reason,
                method=method,
                host=_text(args, "host"),
                path=path,
                user_agent=_text(args, "user_agent"),
                status=decision.status,
            )
        return decision_vars(decision)


def build_agent(config: Config, log: Any) -> Agent:
    agent = Agent()
    agent.register(CHECK_REQUEST, RequestChecker(config, log))
    return agent
