"""The [usage] table of agent.toml."""

from __future__ import annotations

from dataclasses import dataclass

from spoa_agent.server.settings import Listen

DEFAULT_LISTEN = Listen("127.0.0.1", 12346)


@dataclass(frozen=True, slots=True)
class UsageSettings:
    # Where HAProxy's Lua sends the usage of each answer (its USAGE_ADDR);
    # None: not counted. Loopback only by default: the records are trusted.
    listen: Listen | None = DEFAULT_LISTEN
    # Daily roll-ups are kept this long; hourly ones at most HOURLY_DAYS.
    retention_days: int = 35
    # Per-key Prometheus series: off by default, since keys are unbounded.
    per_key_metrics: bool = False
