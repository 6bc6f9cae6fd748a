"""Rate specs and the circuit breaker: pure code."""

import pytest

from spoa_agent.ratelimit.breaker import CircuitBreaker
from spoa_agent.ratelimit.limits import Rate, parse_rate


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
