"""Prometheus metrics and the health endpoint, on a port of their own.

    GET /metrics   Prometheus text format
    GET /health    JSON: {"status": "ok" | "degraded", "redis": bool, ...}

With --workers N each worker serves its own on port + its index (0..N-1):
scrape them all, or sum in PromQL. The HTTP side is a few lines of asyncio
in the agent's own loop, so /health sees that loop as it is.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

REGISTRY = CollectorRegistry()


class Tally:
    """A counter the request path bumps without a lock, read when Prometheus
    scrapes. The agent's loop is one thread, and a Counter's lock and label
    lookup cost more than the rest of counting a request."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.counts: dict[tuple[str, ...], int] = {}
        REGISTRY.register(self)

    def inc(self, *labels: str) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def add(self, amount: int, *labels: str) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


class Timings:
    """A histogram the request path fills without a lock (see Tally)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.buckets = name, documentation, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket
        self.sum = 0.0
        REGISTRY.register(self)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative,
                                    sum_value=self.sum)


DECISIONS = Tally("spoa_decisions", "Decisions by outcome and reason", ("outcome", "reason"))
DECISION_SECONDS = Timings(
    "spoa_decision_seconds", "Time the agent takes to decide (from NOTIFY to answer)",
    (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
FRAMES = Tally("spoa_spop_frames", "SPOP frames received, by type", ("type",))
# LLM usage as the upstream reported it (spoa_agent/usage): models are few.
LLM_TOKENS = Tally("spoa_llm_tokens", "LLM tokens the upstream reported, by model and "
                   "direction (in, out)", ("model", "direction"))
LLM_REQUESTS = Tally("spoa_llm_requests", "Answers counted for usage, by model and status "
                     "class", ("model", "status"))
# Per key: only when [usage] per_key_metrics is on (keys are unbounded).
LLM_KEY_TOKENS = Tally("spoa_llm_key_tokens", "LLM tokens by key (or JWT subject) and "
                       "direction", ("key", "direction"))
USAGE_DROPPED = Tally("spoa_usage_dropped", "Usage records not counted, by reason",
                      ("reason",))
PROTOCOL_ERRORS = Counter("spoa_spop_errors", "Connections ended by a protocol error, "
                          "by SPOP status", ["status"], registry=REGISTRY)
IN_FLIGHT = Gauge("spoa_in_flight", "NOTIFYs being handled that wait on I/O",
                  registry=REGISTRY)
KEY_CACHE = Tally("spoa_key_cache", "API key lookups, by cache result", ("result",))
ARGON2 = Counter("spoa_argon2_verifications", "argon2id verifications run",
                 registry=REGISTRY)
REDIS_CALLS = Counter("spoa_redis_calls", "Redis calls on the request path, by purpose "
                      "(keys: a key lookup; ratelimit: one script call per batch of "
                      "requests)", ["purpose"], registry=REGISTRY)
REDIS_ERRORS = Counter("spoa_redis_errors", "Failed Redis calls, by purpose", ["purpose"],
                       registry=REGISTRY)
BREAKER_OPEN = Gauge("spoa_ratelimit_breaker_open", "1 while the rate limiter does not "
                     "call Redis", registry=REGISTRY)
# Browser sign-in (spoa_agent/oidc): sign-ins by result, and the sessions
# in Redis (every agent reports the same figure, read every SESSIONS_EVERY s).
OIDC_LOGINS = Counter("spoa_oidc_logins", "Browser sign-ins, by result (redirect: sent to "
                      "the provider; success; failed: a bad callback; error: the provider "
                      "unreachable)", ["result"], registry=REGISTRY)
SESSIONS = Gauge("spoa_sessions", "Browser sessions in Redis (not yet past their absolute "
                 "lifetime)", registry=REGISTRY)


def count_decision(outcome: str, reason: str, seconds: float) -> None:
    # Once per request: the two updates inline rather than two more calls.
    counts, labels = DECISIONS.counts, (outcome, reason)
    counts[labels] = counts.get(labels, 0) + 1
    timings = DECISION_SECONDS
    timings.counts[bisect.bisect_left(timings.buckets, seconds)] += 1
    timings.sum += seconds


Health = Callable[[], Awaitable[dict[str, Any]]]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  health: Health) -> None:
    try:
        request = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass  # headers: not needed
        parts = request.split()
        path = parts[1].decode("ascii", "replace") if len(parts) > 1 else ""
        if path.startswith("/metrics"):
            status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        elif path.startswith("/health"):
            report = await health()
            status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
            kind, body = "application/json", json.dumps(report).encode()
        else:
            status, kind, body = "404 Not Found", "text/plain", b"try /metrics or /health\n"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_server(host: str, port: int, health: Health) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: _answer(r, w, health), host, port)
