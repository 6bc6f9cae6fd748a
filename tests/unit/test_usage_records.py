"""Usage records as HAProxy's Lua sends them, and the report's rows: pure
code, table-tested (the whole path runs in tests/clients/test_usage.py)."""

from __future__ import annotations

import json

import pytest

from spoa_agent.usage.record import MAX_LINE, parse_record
from spoa_agent.usage.report import render, rows
from spoa_agent.usage.store import Cell, Usage, buckets, script_args

GOOD = {"id": "h-1-2-3", "key": "k1", "name": "laptop aider", "model": "llama3.2:1b",
        "status": 200, "in": 12, "out": 3, "bytes": 400, "ms": 25, "ts": 1796040000}


def line(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_record_is_read_field_by_field() -> None:
    record = parse_record(line())
    assert record is not None
    assert (record.principal, record.name, record.model, record.input, record.output,
            record.status_class) == ("k1", "laptop aider", "llama3.2:1b", 12, 3, "2xx")


@pytest.mark.parametrize("bad", [
    b"not json", b"[1, 2]", line(id=""), line(key=""), line(key="a\nb"), line(**{"in": -1}),
    line(out=1 << 41), line(status="200"), line(ms=1.5), b"{" + b" " * MAX_LINE + b"}",
])
def test_what_is_not_a_record_is_dropped_whole(bad: bytes) -> None:
    assert parse_record(bad) is None


def test_odd_names_still_count_under_safe_ones() -> None:
    record = parse_record(line(model="x\x00y", name="tab\there", status=999))
    assert record is not None
    assert (record.model, record.name, record.status_class) == ("other", "k1", "other")
    no_model = parse_record(line(model=""))
    assert no_model is not None and no_model.model == "-"


def test_the_script_gets_the_batch_summed_per_roll_up_field() -> None:
    record, other = parse_record(line()), parse_record(line(key="k2", status=500, **{"in": 1}))
    assert record is not None and other is not None
    args = script_args([record, record, other], "h-1-2-3", retention_days=35)
    assert args[:3] == ["spoa:usage:{spoa-usage}:", 3 * 86400, "h-1-2-3"]
    # Per roll-up: its key, TTL, field count, then fields and their sums.
    assert args[3:6] == ["h:2026113012", 7 * 86400 + 3600, 12]
    fields = dict(zip(args[6:30:2], args[7:30:2], strict=True))
    assert fields["k1\x1fllama3.2:1b\x1frequests"] == 2
    assert fields["k1\x1fllama3.2:1b\x1fin"] == 24
    assert fields["k2\x1fllama3.2:1b\x1fs5xx"] == 1
    assert args[30:33] == ["d:20261130", 35 * 86400, 12]
    assert args[57:] == ["names", "k1", "laptop aider", "k2", "laptop aider"]


def test_short_periods_read_hourly_roll_ups_and_long_ones_daily() -> None:
    now = 1796040000.0
    kind, names = buckets(now - 3 * 3600, now)
    assert kind == "h" and len(names) == 4
    kind, names = buckets(now - 10 * 86400, now)
    assert kind == "d" and len(names) == 11


def cells() -> list[Cell]:
    return [Cell("2026113000", "k1", "m1", Usage(2, 10, 4, 100, 30, 0)),
            Cell("2026113001", "k1", "m2", Usage(1, 100, 50, 10, 10, 1)),
            Cell("2026113001", "k2", "m1", Usage(1, 1, 1, 1, 1, 0))]


def test_rows_by_key_model_and_day() -> None:
    by_key = rows(cells(), "key", {"k1": "laptop"})
    assert [(r["key"], r["name"], r["requests"], r["tokens"], r["errors"], r["avg_ms"])
            for r in by_key] == [("k1", "laptop", 3, 164, 1, 13), ("k2", "k2", 1, 2, 0, 1)]
    assert [(r["model"], r["tokens"]) for r in rows(cells(), "model", {})] == [
        ("m2", 150), ("m1", 16)]
    assert [(r["day"], r["requests"]) for r in rows(cells(), "day", {})] == [("2026-11-30", 4)]


def test_render_as_table_csv_and_json() -> None:
    table = rows(cells(), "model", {})
    text = render(table, "table").splitlines()
    assert text[0].split() == ["model", "requests", "tokens_in", "tokens_out", "tokens",
                               "errors", "bytes", "avg_ms"]
    assert text[-1].split() == ["total", "4", "111", "55", "166", "1", "111"]
    assert render(table, "csv").splitlines()[1] == "m2,1,100,50,150,1,10,10"
    assert json.loads(render(table, "json")) == table
    assert render([], "table") == "no usage recorded in this period"


BUDGET = "spoa:rl:{spoa-rl}:tokens:api_key:k1@1000/d 86400000 1"


def test_a_record_names_the_budget_it_is_charged_to() -> None:
    record = parse_record(line(budget=BUDGET))
    assert record is not None and record.charge is not None
    assert record.charge == ("spoa:rl:{spoa-rl}:tokens:api_key:k1@1000/d", 86_400_000, 15)
    output_only = parse_record(line(budget=BUDGET[:-1] + "0"))
    assert output_only is not None and output_only.charge is not None
    assert output_only.charge.tokens == 3  # only the answer's tokens
    assert parse_record(line()).charge is None  # type: ignore[union-attr]


@pytest.mark.parametrize("budget", [
    "", 5, "spoa:usage:{spoa-usage}:h:x 1 1", "spoa:rl:{spoa-rl}:key:k1 1 1",
    "spoa:rl:{spoa-rl}:tokens:k1 0 1", "spoa:rl:{spoa-rl}:tokens:k1 10 2",
    "spoa:rl:{spoa-rl}:tokens:a b 10 1", BUDGET + " ",
])
def test_a_record_with_a_budget_that_is_not_one_is_dropped_whole(budget: object) -> None:
    # Never a key outside the budgets' own, never half-charged.
    assert parse_record(line(budget=budget)) is None
