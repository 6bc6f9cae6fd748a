"""An open-loop HTTP load generator: requests leave at a fixed rate, whatever
the answers do, and each latency counts from when its request was due.

    .venv/bin/python bench/openloop.py URL --rate 15000 [--duration 10]
        [--connections 64] [-H 'Authorization: Bearer ...'] [--warmup 1]

wrk sends the next request when the previous one is answered (closed loop),
so a slow server slows the client down and its latency figures hide the
queue (coordinated omission). Here request n is due at start + n/rate; it
leaves on the idle keep-alive connection idle the longest (so every one stays
in use), and if none is idle it waits
in the client, and that wait counts in its latency (from when it was due); a
request sent at once counts from when it left, so the client's timer (a
millisecond's granularity) does not count. HTTP/1.1, one request in flight
per connection, responses with Content-Length (HAProxy's own answers).

One Python process, one core at most: `achieved_per_s` (answers received per
second once the warm-up is over, whichever request they answer) below the rate
asked means the generator or the server could not keep up; against a server with
room to spare (HAProxy answering itself) it is the generator's own limit.
Prints one JSON object: rate asked and achieved, latency percentiles in ms,
statuses, requests left unanswered.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Latency percentiles reported (ms).
PERCENTILES = (50, 90, 99, 99.9)


@dataclass
class Conn:
    sock: socket.socket
    since: float = 0.0  # when the latency of its request in flight started; 0.0: idle
    counted: bool = False  # that request was due after the warm-up
    buffer: bytearray = field(default_factory=bytearray)


@dataclass
class Result:
    rate: float
    duration: float
    achieved_per_s: float
    completed: int
    latencies_ms: list[float]
    statuses: dict[int, int]
    unanswered: int
    max_backlog: int  # requests that were due and had no idle connection, at worst

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies_ms)
        return {
            "rate": self.rate, "duration": self.duration,
            "achieved_per_s": round(self.achieved_per_s, 1), "completed": self.completed,
            "latency_ms": {f"p{p:g}": round(percentile(ordered, p), 3) for p in PERCENTILES},
            "statuses": self.statuses, "unanswered": self.unanswered,
            "max_backlog": self.max_backlog,
        }


def percentile(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of a sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered)) - 1))
    return ordered[rank]


def _response_end(buffer: bytearray) -> tuple[int, int] | None:
    """(status, bytes the whole response takes) once `buffer` holds one."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).lower()
    status = int(head[9:12])
    for line in head.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line[15:])
            break
    else:
        raise ValueError("a response without Content-Length")
    total = head_end + 4 + length
    return (status, total) if len(buffer) >= total else None


def run(url: str, rate: float, duration: float, connections: int,
        headers: dict[str, str], warmup: float = 1.0) -> Result:
    """Offer `rate` requests/s for `warmup` + `duration` seconds; latencies of
    the requests due after the warm-up."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}",
             *(f"{name}: {value}" for name, value in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()

    selector = selectors.DefaultSelector()

    def connect() -> socket.socket:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    idle: deque[Conn] = deque()
    for _ in range(connections):
        conn = Conn(connect())
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        idle.append(conn)

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    unanswered = 0  # still waiting when the generator gave up
    answered = 0  # answers received after the warm-up
    backlog: deque[float] = deque()  # due times of requests waiting for a connection
    max_backlog = 0
    interval = 1.0 / rate
    start = time.perf_counter() + 0.05
    measure_from = start + warmup
    stop_at = measure_from + duration
    total = int((warmup + duration) * rate)
    sent = 0
    clock = time.perf_counter

    def send(conn: Conn, due: float, since: float) -> None:
        conn.since, conn.counted = since, due >= measure_from
        conn.sock.send(request)  # a few hundred bytes: the socket buffer takes them whole

    def reconnect(conn: Conn) -> None:
        """The server closed an idle connection (its keep-alive timeout): a new one."""
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = connect()
        conn.buffer.clear()
        selector.register(conn.sock, selectors.EVENT_READ, conn)

    while True:
        now = clock()
        while sent < total and start + sent * interval <= now:
            due = start + sent * interval
            sent += 1
            if idle:
                send(idle.popleft(), due, clock())
            else:
                backlog.append(due)
        max_backlog = max(max_backlog, len(backlog))
        busy = connections - len(idle)
        if sent >= total and not busy:
            break
        if sent < total:
            timeout = max(0.0, start + sent * interval - clock())
        else:
            timeout = max(0.0, stop_at + 5.0 - clock())  # the last answers, at most 5 s
            if timeout == 0.0:
                unanswered += busy + len(backlog)
                break
        for key, _ in selector.select(timeout):
            conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                if conn.since:
                    raise ConnectionError("the server closed a connection with a request "
                                          "in flight")
                reconnect(conn)
                continue
            conn.buffer += chunk
            answer = _response_end(conn.buffer)
            if answer is None:
                continue
            status, size = answer
            del conn.buffer[:size]
            done = clock()
            answered += done >= measure_from
            if conn.counted:
                latencies.append((done - conn.since) * 1000.0)
                statuses[status] = statuses.get(status, 0) + 1
            if backlog:
                due = backlog.popleft()
                send(conn, due, due)  # it waited for a connection: that is latency
            else:
                conn.since = 0.0
                idle.append(conn)
    elapsed = max(clock(), stop_at) - measure_from
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return Result(rate, duration, answered / elapsed, len(latencies), latencies,
                  statuses, unanswered, max_backlog)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/openloop.py",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before measuring (1)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("-H", "--header", action="append", default=[],
                        help="'Name: value', repeatable")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    result = run(args.url, args.rate, args.duration, args.connections,
                 {name.strip(): value.strip() for name, value in headers.items()}, args.warmup)
    json.dump(result.summary(), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
