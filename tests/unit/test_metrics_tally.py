"""The lock-free counters read as Prometheus's own would: names, labels,
cumulative buckets with `le` meaning at most."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spoa_agent import metrics


def test_tally_and_timings_in_the_text_format(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    monkeypatch.setattr(metrics, "REGISTRY", registry)
    decisions = metrics.Tally("t_decisions", "Decisions", ("outcome", "reason"))
    seconds = metrics.Timings("t_seconds", "Time", (0.001, 0.01))
    for _ in range(3):
        decisions.inc("allow", "allowed")
    decisions.inc("deny", "rate_limited")
    for value in (0.0005, 0.001, 0.005, 2.0):
        seconds.observe(value)
    text = generate_latest(registry).decode()
    assert 't_decisions_total{outcome="allow",reason="allowed"} 3.0' in text
    assert 't_decisions_total{outcome="deny",reason="rate_limited"} 1.0' in text
    assert "# TYPE t_decisions_total counter" in text
    assert 't_seconds_bucket{le="0.001"} 2.0' in text  # 0.001 itself is "at most 0.001"
    assert 't_seconds_bucket{le="0.01"} 3.0' in text
    assert 't_seconds_bucket{le="+Inf"} 4.0' in text
    assert "t_seconds_count 4.0" in text and "t_seconds_sum 2.0065" in text
