"""`spoa-agent usage`: the roll-ups summed into rows, by key, model or day."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Literal

from spoa_agent.usage.store import Cell, Usage

By = Literal["key", "model", "day"]
COLUMNS = ("requests", "tokens_in", "tokens_out", "tokens", "errors", "bytes", "avg_ms")


def rows(cells: Iterable[Cell], by: By, names: Mapping[str, str]) -> list[dict[str, object]]:
    """One row per key, model or day, largest token use first (days in order)."""
    sums: dict[str, tuple[dict[str, str], Usage]] = {}
    for cell in cells:
        if by == "key":
            group = cell.principal
            label = {"key": cell.principal, "name": names.get(cell.principal, cell.principal)}
        elif by == "model":
            group = cell.model
            label = {"model": cell.model}
        else:
            group = f"{cell.bucket[:4]}-{cell.bucket[4:6]}-{cell.bucket[6:8]}"
            label = {"day": group}
        sums.setdefault(group, (label, Usage()))[1].merge(cell.usage)
    ordered = sorted(sums.items(), key=lambda item: item[0]) if by == "day" else \
        sorted(sums.items(), key=lambda item: -(item[1][1].input + item[1][1].output))
    return [{**label, **_figures(usage)} for _, (label, usage) in ordered]


def _figures(usage: Usage) -> dict[str, object]:
    return {"requests": usage.requests, "tokens_in": usage.input, "tokens_out": usage.output,
            "tokens": usage.input + usage.output, "errors": usage.errors, "bytes": usage.bytes,
            "avg_ms": round(usage.ms / usage.requests) if usage.requests else 0}


def render(table: list[dict[str, object]], fmt: Literal["table", "json", "csv"]) -> str:
    if fmt == "json":
        return json.dumps(table, indent=2)
    if not table:
        return "" if fmt == "csv" else "no usage recorded in this period"
    header = list(table[0])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue().rstrip("\n")
    total = {name: sum(int(str(row[name])) for row in table) for name in COLUMNS
             if name != "avg_ms"}
    lines = [header] + [[str(row[name]) for name in header] for row in table]
    lines.append(["total", *[""] * (len(header) - len(COLUMNS) - 1),
                  *[str(total.get(name, "")) for name in COLUMNS]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i >= len(header) - len(COLUMNS) else
                               cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths,
                                                                              strict=True)))
                     for line in lines)
