"""The SPOP-port flood (issue 12): one local connection floods the agent's port
with NOTIFYs while a well-behaved peer measures its own NOTIFY round trips.

    .venv/bin/python bench/spop_flood.py [--duration 5]
    git worktree add --detach /tmp/before REV        # another revision's agent:
    PYTHONPATH=/tmp/before .venv/bin/python bench/spop_flood.py

Starts `spoa-agent serve` (the shipped policy with keys and limits off, as the
protocol tests run it; no Redis needed) on a free loopback port, then three
phases of `--duration` seconds each:

- quiet: only the probe: one NOTIFY (GET /api/tags, answered `allow`), wait
  for its ACK, pause 2 ms, again;
- flood, reading: a second process pipelines NOTIFYs on one connection as fast
  as it can and reads (and throws away) the ACKs;
- flood, never reading: the same, but it never reads an ACK.

Each row gives the probe's p50/p99/max round trip over its valid answers (an
ACK for its stream that says `allow`), answers slower than 1 s (HAProxy's
shipped `timeout processing`: each one would have been a 503; a probe not
answered in 10 s ends the phase), how many NOTIFYs the flood got the agent to
take (MB and thousands per second sent, MB of ACKs read) and the agent's
resident memory at the end of the phase (VmRSS). The flood and the probe run
in separate processes so neither waits on the other's GIL; on a 2-core machine
they still share the cores with the agent, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from spoa_agent.demo.stack import Gateway, policy_only_config
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.spop import (
    Ack,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    decode_frame,
    encode_frame,
)

HELLO = HaproxyHello(("2.0",), 16380, frozenset({"pipelining"}), False, "bench")
# Past this an answer is a 503 at the gateway (haproxy/spoe-agent.conf).
PROCESSING_TIMEOUT = 1.0
PROBE_GAP = 0.002
# The flood: requests as HAProxy sends them, allowed ones (a denied one would
# also write a log line each: hundreds of MB of log per run).
FLOOD_ARGS: dict[str, Any] = {"ip": IPv4Address("192.0.2.7"), "method": "GET",
                              "path": "/api/tags", "host": "ollama.example.com"}
PROBE_ARGS: dict[str, Any] = {"ip": IPv4Address("127.0.0.1"), "method": "GET",
                              "path": "/api/tags", "host": "ollama.example.com"}


class Conn:
    """One blocking SPOP connection playing HAProxy."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.sock.sendall(encode_frame(HELLO))
        self.read()

    def read(self) -> object:
        while True:
            if len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= 4 + size:
                    frame = bytes(self.buffer[4:4 + size])
                    del self.buffer[:4 + size]
                    return decode_frame(frame)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent closed the connection")
            self.buffer += chunk


def notify(stream_id: int, args: dict[str, Any]) -> bytes:
    return encode_frame(Notify(stream_id, 1, (Message("check-request", args),)))


def flood(port: int, read: bool, sent: Any, acks: Any, stop: Any) -> None:
    """Pipeline NOTIFYs on one connection until `stop`, reading the ACKs or not."""
    conn = Conn(port)
    chunk = b"".join(notify(n, FLOOD_ARGS) for n in range(1, 1001))
    if read:
        def reader() -> None:
            got = 0
            with contextlib.suppress(OSError):
                while True:
                    data = conn.sock.recv(1 << 20)
                    if not data:
                        return
                    got += len(data)
                    acks.value = got
        threading.Thread(target=reader, daemon=True).start()
    conn.sock.settimeout(0.2)
    view = memoryview(chunk)
    total = 0
    while not stop.is_set():
        offset = 0
        while offset < len(view) and not stop.is_set():
            try:
                offset += conn.sock.send(view[offset:])
            except TimeoutError:
                continue  # the agent stopped reading us: keep trying
        total += offset
        sent.value = total
    os._exit(0)  # no FIN, no goodbye: leave the connection to the agent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def probe(port: int, duration: float) -> tuple[list[float], int, int]:
    """Round trips (s) of valid answers; answers over the processing timeout
    (or none in 10 s, which ends the phase); wrong answers."""
    conn = Conn(port)
    times: list[float] = []
    slow = bad = 0
    stream = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        stream += 1
        frame = notify(stream, PROBE_ARGS)
        started = time.perf_counter()
        conn.sock.sendall(frame)
        try:
            ack = conn.read()
        except TimeoutError:  # no answer in 10 s: the flood owns the agent
            slow += 1
            break
        took = time.perf_counter() - started
        ok = (isinstance(ack, Ack) and ack.stream_id == stream
              and any(isinstance(a, SetVar) and a.name == "decision" and a.value == "allow"
                      for a in ack.actions))
        if not ok:
            bad += 1
        elif took > PROCESSING_TIMEOUT:
            slow += 1
        else:
            times.append(took)
        time.sleep(PROBE_GAP)
    conn.sock.close()
    return times, slow, bad


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def phase(name: str, port: int, pid: int, duration: float, mode: str | None) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    sent, acks, stop = context.Value("q", 0), context.Value("q", 0), context.Event()
    flooder = None
    if mode is not None:
        flooder = context.Process(target=flood, args=(port, mode == "read", sent, acks, stop))
        flooder.start()
        time.sleep(1.0)  # the flood is going (and, unread, its buffers full)
    started = time.monotonic()
    times, slow, bad = probe(port, duration)
    rss = rss_kb(pid)
    flooded = time.monotonic() - started + (1.0 if mode else 0.0)
    if flooder is not None:
        stop.set()
        flooder.join(10)
        if flooder.exitcode is None:
            flooder.kill()
    return {"phase": name, "probes": len(times) + slow + bad,
            "p50": percentile(times, 50) * 1000, "p99": percentile(times, 99) * 1000,
            "max": max(times, default=float("nan")) * 1000,
            "mean": statistics.fmean(times) * 1000 if times else float("nan"),
            "over_1s": slow, "bad": bad,
            "flood_mb": sent.value / 1e6, "acks_mb": acks.value / 1e6,
            "flood_per_s": sent.value / len(notify(1, FLOOD_ARGS)) / flooded,
            "rss_mb": rss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    args = parser.parse_args()
    import spoa_agent.server.protocol as protocol
    print(f"agent: {Path(protocol.__file__).parent.parent.parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="spop-flood-") as folder:
        workdir = Path(folder)
        config = policy_only_config(EXAMPLE_CONFIG,
                                    workdir / "policy-only.toml")
        gw = Gateway(workdir)
        try:
            agent = gw.start_agent(config)
            port, pid = gw.agent_port, agent.popen.pid
            time.sleep(0.5)
            rows = [phase("quiet", port, pid, args.duration, None),
                    phase("flood, reading", port, pid, args.duration, "read"),
                    phase("flood, never reading", port, pid, args.duration, "hold")]
            alive = agent.popen.poll() is None
        finally:
            gw.stop()
    print(f"{'phase':<22}{'probes':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'>1s':>5}"
          f"{'bad':>5}{'flood MB':>9}{'k/s':>6}{'ACK MB':>8}{'RSS MB':>8}")
    for row in rows:
        print(f"{row['phase']:<22}{row['probes']:>7}{row['p50']:>8.2f}{row['p99']:>8.2f}"
              f"{row['max']:>8.1f}{row['over_1s']:>5}{row['bad']:>5}{row['flood_mb']:>9.1f}"
              f"{row['flood_per_s'] / 1000:>6.0f}{row['acks_mb']:>8.1f}{row['rss_mb']:>8.1f}")
    print("p50/p99/max: the probe's valid answers; >1s: answers after HAProxy's processing"
          " timeout (503s);\nflood MB, k/s: NOTIFYs the flooding connection got into the"
          " agent; ACK MB: answers it read.")
    if not alive:
        print("the agent died during the run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
