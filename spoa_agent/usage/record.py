"""One answer's usage, as HAProxy's Lua sends it: one JSON object a line.

HAProxy and its Lua are trusted (loopback, the gateway's own), but a record
is still checked field by field: a malformed one is dropped and counted,
never half-counted, and nothing in it can grow the agent's memory or Redis
beyond the bounds below.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

from spoa_agent.ratelimit.limiter import limit_key
from spoa_agent.ratelimit.limits import TOKEN_SCOPES

MAX_LINE = 4096  # bytes: a record is well under 1 KiB
MAX_TOKENS = 1 << 40  # any count above is not a count
# A name (principal, model) is printable text of bounded length: it becomes
# part of a Redis hash field, joined with the others by SEPARATOR.
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
SEPARATOR = "\x1f"
MISSING_MODEL = "-"  # answers that name no model (GET /api/tags, errors)
# A token budget as the agent named it (outcome.budget_var): its Redis key
# (a limiter key of a token scope), microseconds per token, input counted.
_BUDGET_KEY = "|".join(re.escape(limit_key(scope, "")) for scope in sorted(TOKEN_SCOPES))
_BUDGET = re.compile(rf"((?:{_BUDGET_KEY})[^\x00-\x20\x7f]{{1,400}}) ([1-9][0-9]{{0,11}}) ([01])")


class Charge(NamedTuple):
    """What an answer costs its token budget."""

    key: str  # the budget's Redis key
    interval_us: int  # microseconds of the budget's period per token
    tokens: int


class UsageRecord(NamedTuple):
    id: str  # HAProxy's unique-id of the request: a resent record counts once
    principal: str  # key id, or JWT subject
    name: str  # the key's name (shown by `spoa-agent usage`)
    model: str  # as the upstream reported it
    status: int  # the upstream's HTTP status
    input: int  # tokens in, as reported (0: none reported)
    output: int  # tokens out
    bytes: int  # of the answer's body
    ms: int  # from the request's start to the answer's end
    ts: int  # Unix time of the answer's end (HAProxy's clock)
    charge: Charge | None = None  # to the key's token budget, if it has one

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx" if 100 <= self.status <= 599 else "other"


def parse_record(line: bytes) -> UsageRecord | None:
    """The record of one line, or None when the line is not one."""
    if len(line) > MAX_LINE:
        return None
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    ident, principal = raw.get("id"), raw.get("key")
    if not isinstance(principal, str) or not _NAME.fullmatch(principal):
        return None
    if not isinstance(ident, str) or not 0 < len(ident) <= 256:
        return None
    name = raw.get("name")
    name = name if isinstance(name, str) and _NAME.fullmatch(name) else principal
    model = raw.get("model") or MISSING_MODEL
    if not isinstance(model, str) or not _NAME.fullmatch(model):
        model = "other"  # still counted, under a name that cannot harm
    numbers = [raw.get(field, 0) for field in ("status", "in", "out", "bytes", "ms", "ts")]
    if not all(type(n) is int and 0 <= n < MAX_TOKENS for n in numbers):
        return None
    status, used_in, used_out, size, ms, ts = numbers
    charge = None
    if "budget" in raw:
        budget = raw["budget"]
        found = _BUDGET.fullmatch(budget) if isinstance(budget, str) else None
        if found is None:
            return None
        key, interval, counts_input = found.groups()
        charge = Charge(key, int(interval), used_out + (used_in if counts_input == "1" else 0))
    return UsageRecord(ident, principal, name, model, status, used_in, used_out, size, ms, ts,
                       charge)
