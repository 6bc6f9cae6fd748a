"""Prometheus metrics and the health endpoint, on a port of their own.

    GET /metrics   Prometheus text format
    GET /health    JSON: {"status": "ok" | "degraded", "redis": bool, ...}

With --workers N each worker serves its own on port + its index (0..N-1):
scrape them all, or sum in PromQL. The HTTP side is a few lines of asyncio
in the agent's own loop, so /health sees that loop as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()
DECISIONS = Counter("spoa_decisions", "Decisions by outcome and reason",
                    ["outcome", "reason"], registry=REGISTRY)
DECISION_SECONDS = Histogram(
    "spoa_decision_seconds", "Time the agent takes to decide (from NOTIFY to answer)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
             0.5, 1.0), registry=REGISTRY)
FRAMES = Counter("spoa_spop_frames", "SPOP frames received, by type", ["type"],
                 registry=REGISTRY)
PROTOCOL_ERRORS = Counter("spoa_spop_errors", "Connections ended by a protocol error, "
                          "by SPOP status", ["status"], registry=REGISTRY)
IN_FLIGHT = Gauge("spoa_in_flight", "NOTIFYs being handled that wait on I/O",
                  registry=REGISTRY)
KEY_CACHE = Counter("spoa_key_cache", "API key lookups, by cache result", ["result"],
                    registry=REGISTRY)
ARGON2 = Counter("spoa_argon2_verifications", "argon2id verifications run",
                 registry=REGISTRY)
REDIS_CALLS = Counter("spoa_redis_calls", "Redis calls on the request path, by purpose "
                      "(keys: a key lookup; ratelimit: one script call per batch of "
                      "requests)", ["purpose"], registry=REGISTRY)
REDIS_ERRORS = Counter("spoa_redis_errors", "Failed Redis calls, by purpose", ["purpose"],
                       registry=REGISTRY)
BREAKER_OPEN = Gauge("spoa_ratelimit_breaker_open", "1 while the rate limiter does not "
                     "call Redis", registry=REGISTRY)

_decision_children: dict[tuple[str, str], Any] = {}


def count_decision(outcome: str, reason: str, seconds: float) -> None:
    child = _decision_children.get((outcome, reason))
    if child is None:  # labels() costs a lock and a lookup: once per pair
        child = _decision_children[(outcome, reason)] = DECISIONS.labels(outcome, reason)
    child.inc()
    DECISION_SECONDS.observe(seconds)


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
