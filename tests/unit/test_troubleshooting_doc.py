"""docs/troubleshooting.md has a row for every refusal reason, with the status
and public code spoa_agent/reasons.py gives it, and no row for a reason that
no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

from spoa_agent.reasons import HAPROXY_REASONS, Reason

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"

# | `reason` | status | `public code` | ...
ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|\s*(\d{3})\s*\|\s*`([a-z_]+)`\s*\|", re.M)

# Answered by haproxy.cfg itself (http-request return), not through the Lua:
# it has no entry in reasons.py, but operators meet it.
NATIVE = {"too_many_auth_failures": (429, "too_many_auth_failures")}


def _rows() -> dict[str, tuple[int, str]]:
    rows: dict[str, tuple[int, str]] = {}
    for reason, status, code in ROW.findall(DOC.read_text()):
        assert reason not in rows, f"{reason} has two rows in {DOC.name}"
        rows[reason] = (int(status), code)
    return rows


def test_every_reason_has_a_row_with_its_status_and_code() -> None:
    rows = _rows()
    expected = {str(m): (m.status, m.code) for m in Reason} | HAPROXY_REASONS | NATIVE
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"reasons without a row in {DOC.name}: {missing}"
    wrong = {r: rows[r] for r in expected if rows[r] != expected[r]}
    assert not wrong, f"rows whose status or code differ from reasons.py: {wrong}"
    stale = sorted(set(rows) - set(expected))
    assert not stale, f"rows in {DOC.name} for reasons that do not exist: {stale}"
