"""Usage in Redis: hourly and daily roll-ups per principal and model.

Each roll-up is one hash per hour or day whose fields are
`principal<US>model<US>metric` (US: the ASCII unit separator), incremented
by usage_batch.lua, which also remembers each batch's id for BATCH_TTL so
that a batch HAProxy sends again (its connection broke before our answer)
is counted once. Memory: about 7 fields of ~40 bytes per principal, model
and hour (kept HOURLY_DAYS) and again per day (kept retention_days): about
7 KiB per principal and model per day of hourly buckets, 0.3 KiB per day of
daily ones, plus ~100 bytes per batch (up to 500 answers) for the ids of the
last 3 days.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from spoa_agent.usage.record import SEPARATOR, UsageRecord

PREFIX = "spoa:usage:{spoa-usage}:"  # one hash tag: one slot on a Redis Cluster
NAMES = PREFIX + "names"
HOURLY_DAYS = 7
BATCH_TTL = 3 * 86400  # seconds a batch's id is remembered
SCRIPT = resources.files("spoa_agent.usage").joinpath("usage_batch.lua").read_text()


# Cached: a batch's records end within the same few seconds, and formatting
# a time is a good part of what a record costs the agent.
@functools.lru_cache(maxsize=1024)
def hour_of(ts: int) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(ts))


@functools.lru_cache(maxsize=1024)
def day_of(ts: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def script_args(records: Sequence[UsageRecord], batch_id: str,
                retention_days: int) -> list[str | int]:
    """usage_batch.lua's ARGV for a batch: its records summed per roll-up
    field (see the script)."""
    hourly_ttl, daily_ttl = HOURLY_DAYS * 86400 + 3600, retention_days * 86400
    # First the records summed per (who, model, status class, second): a
    # batch holds a few such groups, each expanded into fields once below.
    groups: dict[tuple[str, str, str, int], list[int]] = {}
    names: dict[str, str] = {}
    for r in records:
        group = (r.principal, r.model, r.status_class, r.ts)
        sums = groups.get(group)
        if sums is None:
            groups[group] = [1, r.input, r.output, r.bytes, r.ms]
            names[r.principal] = r.name
        else:
            sums[0] += 1
            sums[1] += r.input
            sums[2] += r.output
            sums[3] += r.bytes
            sums[4] += r.ms
    rollups: dict[tuple[str, int], dict[str, int]] = {}
    for (who, model, status_class, ts), (count, used_in, used_out, size, ms) in groups.items():
        base = f"{who}{SEPARATOR}{model}{SEPARATOR}"
        figures = (("requests", count), (f"s{status_class}", count), ("in", used_in),
                   ("out", used_out), ("bytes", size), ("ms", ms))
        for rollup in ((f"h:{hour_of(ts)}", hourly_ttl), (f"d:{day_of(ts)}", daily_ttl)):
            fields = rollups.setdefault(rollup, {})
            for metric, amount in figures:
                field = base + metric
                fields[field] = fields.get(field, 0) + amount
    args: list[str | int] = [PREFIX, BATCH_TTL, batch_id]
    for (key, ttl), fields in rollups.items():
        args += [key, ttl, len(fields)]
        for field, amount in fields.items():
            args += [field, amount]
    args.append("names")
    for who, name in names.items():
        args += [who, name]
    return args


@dataclass
class Usage:
    """The sums of one row of a report."""

    requests: int = 0
    input: int = 0
    output: int = 0
    bytes: int = 0
    ms: int = 0
    errors: int = 0  # answers with a 4xx or 5xx status

    def add(self, metric: str, value: int) -> None:
        if metric == "requests":
            self.requests += value
        elif metric == "in":
            self.input += value
        elif metric == "out":
            self.output += value
        elif metric == "bytes":
            self.bytes += value
        elif metric == "ms":
            self.ms += value
        elif metric in ("s4xx", "s5xx"):
            self.errors += value

    def merge(self, other: Usage) -> None:
        self.requests += other.requests
        self.input += other.input
        self.output += other.output
        self.bytes += other.bytes
        self.ms += other.ms
        self.errors += other.errors


@dataclass(frozen=True)
class Cell:
    """One bucket's sums for one principal and model."""

    bucket: str  # YYYYMMDDHH or YYYYMMDD
    principal: str
    model: str
    usage: Usage


def buckets(since: float, until: float) -> tuple[str, list[str]]:
    """The roll-ups that cover [since, until]: hourly ones for up to two days
    back, daily ones beyond ("h" or "d", and the bucket names)."""
    if until - since <= 2 * 86400 and time.time() - since <= HOURLY_DAYS * 86400:
        start = int(since) // 3600 * 3600
        return "h", [hour_of(t) for t in range(start, int(until) + 1, 3600)]
    start = int(since) // 86400 * 86400
    return "d", [day_of(t) for t in range(start, int(until) + 1, 86400)]


def read_cells(client: Any, since: float, until: float,
               principal: str | None = None) -> Iterator[Cell]:
    """Every (bucket, principal, model) of the period, from a sync Redis client."""
    kind, names = buckets(since, until)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(f"{PREFIX}{kind}:{name}")
    for name, fields in zip(names, pipe.execute(), strict=True):
        cells: dict[tuple[str, str], Usage] = {}
        for field, value in fields.items():
            who, model, metric = _split(field)
            if principal is not None and who != principal:
                continue
            cells.setdefault((who, model), Usage()).add(metric, int(value))
        for (who, model), usage in cells.items():
            yield Cell(name, who, model, usage)


def _split(field: bytes | str) -> tuple[str, str, str]:
    text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
    who, model, metric = text.rsplit(SEPARATOR, 2)
    return who, model, metric


def names(client: Any, principals: Iterable[str]) -> dict[str, str]:
    wanted = list(principals)
    if not wanted:
        return {}
    found = client.hmget(NAMES, wanted)
    return {who: (name.decode() if isinstance(name, bytes) else name) or who
            for who, name in zip(wanted, found, strict=True)}
