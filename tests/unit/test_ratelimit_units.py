"""Rate specs and the circuit breaker: pure code."""

from dataclasses import replace

import pytest

from spoa_agent.auth.principal import Principal
from spoa_agent.ratelimit.breaker import CircuitBreaker
from spoa_agent.ratelimit.limits import OnRedisError, Rate, parse_rate, parse_token_budget
from spoa_agent.ratelimit.plan import plan_limits
from spoa_agent.ratelimit.settings import LimitSpec, RateLimitConfig


@pytest.mark.parametrize(("text", "rate"), [
    ("60/m", Rate(60, 60.0, 60)),
    ("10/s", Rate(10, 1.0, 10)),
    ("1000/h", Rate(1000, 3600.0, 1000)),
    ("5/d", Rate(5, 86400.0, 5)),
    ("100/5m", Rate(100, 300.0, 100)),
    ("60/m,burst=10", Rate(60, 60.0, 10)),
    (" 60 / m , burst = 1 ", Rate(60, 60.0, 1)),
])
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "60", "60/y", "0/m", "60/0m", "-1/m", "60/m,burst=0",
                                  "60/m,bursts=2", "sixty/m"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_interval_and_tolerance() -> None:
    rate = parse_rate("10/m,burst=3")
    assert rate.interval_us == 6_000_000
    assert rate.tolerance_us == 18_000_000
    assert rate.policy() == "q=10;w=60"


def test_breaker_opens_after_failures_and_lets_one_trial_through() -> None:
    breaker = CircuitBreaker(failures_to_open=3, cooldown=1.0)
    for t in (0.0, 0.1, 0.2):
        assert breaker.allow(t)
        breaker.failure(t)
    assert breaker.state == "open"
    assert not breaker.allow(0.5)
    assert breaker.allow(1.3)  # the trial call
    assert not breaker.allow(1.3)  # only one at a time
    breaker.failure(1.4)
    assert not breaker.allow(2.0)
    assert breaker.allow(2.5)
    breaker.success()
    assert breaker.state == "closed"
    assert all(breaker.allow(2.6) for _ in range(5))


@pytest.mark.parametrize(("text", "count", "period"), [
    ("1000/d", 1000, 86400.0), ("200k/d", 200_000, 86400.0), ("1M/7d", 1_000_000, 604800.0),
    (" 5 k / h ", 5000, 3600.0), ("2G/30d", 2_000_000_000, 2592000.0),
])
def test_parse_token_budget(text: str, count: int, period: float) -> None:
    budget = parse_token_budget(text)
    # The whole budget may be used at once: the burst is the budget.
    assert (budget.count, budget.period, budget.burst) == (count, period, count)


@pytest.mark.parametrize("text", ["", "1000", "0/d", "1000/y", "10K/d", "1m/d", "-1/d",
                                  "1000/d,burst=5", "2G/s"])
def test_parse_token_budget_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_token_budget(text)


KEY = Principal("api_key", "k1", "laptop")
SETTINGS = RateLimitConfig(per_key=LimitSpec(parse_rate("60/m"), OnRedisError.CLOSED),
                           tokens_per_key="1M/d")


def test_the_token_budget_is_planned_last_and_checked_not_charged() -> None:
    limits = plan_limits(SETTINGS, KEY, "192.0.2.1", "chat", None)
    assert [limit.scope for limit in limits] == ["key", "tokens"]
    budget = limits[-1]
    assert budget.key == "spoa:rl:{spoa-rl}:tokens:api_key:k1@1M/d"
    # Interval 0: gcra_batch.lua checks that one token is left, charges none.
    assert budget.batch_args == f"0 {86400 * 1_000_000 - 86400}"
    assert limits[0].batch_args == limits[0].rate.batch_args


def test_a_key_s_own_budget_replaces_the_default_and_names_its_state() -> None:
    own = plan_limits(SETTINGS, replace(KEY, tokens="200k/d"), "", "chat", None)[-1]
    assert (own.key, own.rate.count) == ("spoa:rl:{spoa-rl}:tokens:api_key:k1@200k/d", 200_000)
    output_only = replace(SETTINGS, tokens_output_only=True)
    assert plan_limits(output_only, Principal("jwt", "sub", "sub"), "", "chat", None)[-1].key \
        == "spoa:rl:{spoa-rl}:output_tokens:jwt:sub@1M/d"
    # No caller, no budget.
    assert not any(limit.is_budget for limit in plan_limits(SETTINGS, None, "", "", None))
    assert not plan_limits(RateLimitConfig(), KEY, "", "", None)


def test_a_model_s_budget_replaces_the_key_s_for_that_model_only() -> None:
    settings = replace(SETTINGS, tokens_per_model={"llama3.1:70b": "50k/d", "qwen": "5k/d"})
    key = replace(KEY, tokens="300k/d", model_tokens=(("qwen", "9k/d"), ("weird model", "1k/d")))

    def budget(model: str) -> tuple[str, int]:
        limit = plan_limits(settings, key, "", "chat", None, model)[-1]
        return limit.key.removeprefix("spoa:rl:{spoa-rl}:tokens:"), limit.rate.count

    # The key's own for the model, the config's for the model, the key's own.
    assert budget("qwen") == ("api_key:k1:model:qwen@9k/d", 9000)
    assert budget("llama3.1:70b") == ("api_key:k1:model:llama3.1:70b@50k/d", 50_000)
    assert budget("llama3.2:1b") == ("api_key:k1@300k/d", 300_000)
    assert budget("") == ("api_key:k1@300k/d", 300_000)
    # A model name is the client's text: in a key, only as a digest unless plain.
    name, count = budget("weird model")
    assert count == 1000 and " " not in name and name.startswith("api_key:k1:model:#")
