"""Usage in Redis: hourly and daily roll-ups per principal and model.

Each roll-up is one hash per hour or day whose fields are
`principal<US>model<US>metric` (US: the ASCII unit separator), incremented
by usage_record.lua, which also remembers each record's id for RECORD_TTL so
that a record HAProxy sends again (its connection broke before our answer)
is counted once. Memory: about 7 fields of ~40 bytes per principal, model
and hour (kept HOURLY_DAYS) and again per day (kept retention_days): about
7 KiB per principal and model per day of hourly buckets, 0.3 KiB per day of
daily ones, plus ~80 bytes per request for the ids of the last 3 days.
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
RECORD_TTL = 3 * 86400  # seconds a record's id is remembered
SCRIPT = resources.files("spoa_agent.usage").joinpath("usage_record.lua").read_text()


# Cached: a batch's records end within the same few seconds, and formatting
# a time is a good part of what a record costs the agent.
@functools.lru_cache(maxsize=1024)
def hour_of(ts: int) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(ts))


@functools.lru_cache(maxsize=1024)
def day_of(ts: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def script_args(records: Sequence[UsageRecord], retention_days: int) -> list[str | int]:
    """usage_record.lua's ARGV for a batch (see the script)."""
    args: list[str | int] = [PREFIX, HOURLY_DAYS * 86400 + 3600, retention_days * 86400,
                             RECORD_TTL]
    for r in records:
        args += [r.id, hour_of(r.ts), day_of(r.ts), r.principal, r.name, r.model,
                 r.status_class, r.input, r.output, r.bytes, r.ms]
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
