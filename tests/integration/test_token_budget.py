"""A token budget against a real Redis and a real agent: checked by the
limiter's batch script (a token left: admitted, none: refused until it
refills), charged from the usage records HAProxy's Lua sends to the agent,
once per batch however often the batch is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from spoa_agent.auth.principal import Principal
from spoa_agent.demo.stack import Gateway
from spoa_agent.ratelimit.limits import OnRedisError, parse_rate
from spoa_agent.ratelimit.plan import plan_limits
from spoa_agent.ratelimit.settings import LimitSpec, RateLimitConfig
from spoa_agent.reasons import Reason
from spoa_agent.store.redis import sync_client
from tests.conftest import EXAMPLE_CONFIG
from tests.integration.test_ratelimit import check, limiter, run
from tests.integration.test_usage_ingest import record, send

PER_TOKEN_US = 86_400_000_000 // 1000  # 1000/d: one token back every 86.4 s


@pytest.fixture
def agent_gw(redis_gw: Gateway) -> Iterator[Gateway]:
    redis_gw.start_agent(EXAMPLE_CONFIG)
    yield redis_gw


def charged(ident: str, budget_key: str, used_in: int, used_out: int) -> bytes:
    """A record as spoa_usage.lua sends it for a request the agent admitted
    under `budget_key` (txn.spoa.budget)."""
    line = json.loads(record(ident, used_in=used_in, used_out=used_out))
    return json.dumps({**line, "budget": f"{budget_key} {PER_TOKEN_US} 1"}).encode()


def debt_tokens(gw: Gateway, key: str) -> float:
    """How many tokens the budget's state stands for (used and not refilled)."""
    client = sync_client(gw.redis_url)
    seconds, micros = client.time()
    tat = int(client.get(key) or 0)
    client.close()
    return max(0, tat - (seconds * 1_000_000 + micros)) / PER_TOKEN_US


def test_a_budget_admits_until_its_tokens_are_charged_then_refuses(agent_gw: Gateway) -> None:
    settings = RateLimitConfig()
    budget = plan_limits(settings, Principal("api_key", "budget1", "b", tokens="1000/d"), "",
                         "chat", None)
    [limit] = budget
    assert limit.is_budget

    async def body() -> None:
        rl = limiter(agent_gw.redis_url)
        # A fresh budget: admitted, and checking charges nothing.
        for _ in range(3):
            assert (await check(rl, list(budget))).admitted
        assert debt_tokens(agent_gw, limit.key) == 0

        # Answers of 600 and 300 tokens: 100 left, still admitted.
        assert send(agent_gw.usage_port, [charged("r1", limit.key, 400, 200),
                                          charged("r2", limit.key, 250, 50)]) == "ok 2"
        assert 899 < debt_tokens(agent_gw, limit.key) <= 900
        assert (await check(rl, list(budget))).admitted

        # One of 500 overshoots the budget by 400: the key is in debt, and
        # refused until a token is back (401 tokens' worth of refill).
        assert send(agent_gw.usage_port, [charged("r3", limit.key, 300, 200)]) == "ok 1"
        # The same batches again (HAProxy resending after a lost answer): not charged again.
        assert send(agent_gw.usage_port, [charged("r1", limit.key, 400, 200),
                                          charged("r2", limit.key, 250, 50)]) == "ok 2"
        assert send(agent_gw.usage_port, [charged("r3", limit.key, 300, 200)]) == "ok 1"
        assert 1399 < debt_tokens(agent_gw, limit.key) <= 1400
        verdict = await check(rl, list(budget))
        assert (verdict.admitted, verdict.status, verdict.reason) == (
            False, 429, Reason.TOKEN_BUDGET_EXHAUSTED)
        assert verdict.limit is limit
        want = 401 * PER_TOKEN_US / 1_000_000
        assert want - 2 <= verdict.retry_after <= want + 1
        # Refused from the agent's own memory from now on: no Redis call.
        assert rl.quick(list(budget)) is not None

    run(body)
    # The usage itself was counted once too.
    result = agent_gw.spoa_agent("usage", "--format", "json")
    assert json.loads(result.stdout)[0]["tokens"] == 1400


def test_an_output_only_budget_and_a_rate_limit_together(agent_gw: Gateway) -> None:
    settings = RateLimitConfig(per_key=LimitSpec(parse_rate("100/m"), OnRedisError.CLOSED),
                               tokens_output_only=True)
    limits = plan_limits(settings, Principal("api_key", "budget2", "b", tokens="1000/d"), "",
                         "chat", None)
    key_limit, budget = limits
    assert budget.scope == "output_tokens"

    async def body() -> None:
        rl = limiter(agent_gw.redis_url)
        verdict = await check(rl, list(limits))
        # The headers show the request limit: a budget has no requests to count.
        assert (verdict.admitted, verdict.limit, verdict.remaining) == (True, key_limit, 99)
        line = json.loads(record("o1", used_in=5000, used_out=1000))
        assert send(agent_gw.usage_port, [json.dumps(
            {**line, "budget": f"{budget.key} {PER_TOKEN_US} 0"}).encode()]) == "ok 1"
        # Only the 1000 output tokens count: none left.
        assert 999 < debt_tokens(agent_gw, budget.key) <= 1000
        refused = await check(rl, list(limits))
        assert (refused.admitted, refused.reason) == (False, Reason.TOKEN_BUDGET_EXHAUSTED)
        # A refused request is charged nothing, on the request limit either.
        await asyncio.sleep(0)
        assert (await check(rl, [key_limit])).remaining == 98

    run(body)
