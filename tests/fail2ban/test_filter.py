"""The filter against its samples in fail2ban's '# failJSON:' format."""

from __future__ import annotations

import json

import pytest

from tests.fail2ban.helpers import FILTER, SAMPLES, banned_addresses


def samples() -> list[tuple[dict[str, object], str]]:
    out = []
    lines = SAMPLES.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("# failJSON:"):
            out.append((json.loads(line.removeprefix("# failJSON:")), lines[index + 1]))
    return out


SAMPLE_LINES = samples()


def test_samples_cover_every_action_the_agent_logs_on_a_client() -> None:
    actions = {json.loads(line)["event.action"] for _, line in SAMPLE_LINES}
    assert {"auth_failed", "policy_denied", "rate_limited", "ratelimit_unavailable",
            "auth_unavailable"} <= actions
    assert any(not expected["match"] for expected, _ in SAMPLE_LINES)


@pytest.mark.parametrize(("expected", "line"), SAMPLE_LINES,
                         ids=[str(e.get("desc", i)) for i, (e, _) in enumerate(SAMPLE_LINES)])
def test_sample(expected: dict[str, object], line: str) -> None:
    found = banned_addresses(line)
    if expected["match"]:
        assert found == [expected["host"]]
    else:
        assert found == []


def test_aggressive_mode_counts_rate_limited() -> None:
    line = next(line for e, line in SAMPLE_LINES if '"rate_limited"' in line)
    assert banned_addresses(line, f"{FILTER}[mode=aggressive]") == ["192.0.2.11"]


def test_a_used_up_token_budget_is_never_counted() -> None:
    # Using one's share of the GPU is no attack, even in aggressive mode.
    line = next(line for e, line in SAMPLE_LINES if '"token_budget_exhausted"' in line)
    for mode in ("normal", "aggressive"):
        assert banned_addresses(line, f"{FILTER}[mode={mode}]") == []
