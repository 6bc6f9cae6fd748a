"""Valid clients while one address floods the gateway with wrong API keys
(issue 12, item 7).

    .venv/bin/python bench/auth_flood.py [--haproxy 2.8] [--flood 2000] [--duration 6]

A real gateway (spoa_agent.demo.stack.gateway: Redis, the demo upstream, the
agent with the example config, HAProxy with the shipped haproxy.cfg), then
two phases of `--duration` seconds:

  quiet  127.0.0.3 sends a cached valid key, one request every 10 ms on a
         keep-alive connection: p50 and p99 of its latency.
  flood  the same, while 127.0.0.2 (another process) opens `--flood`
         connections and sends a wrong secret for a real key id on every one
         at once (each needs argon2id), then again on each connection 0.5 s
         after its answer (a connection closed or refused is opened
         again 0.5 s later; status 0 in the answers).
  newcomers  the flood goes on for another `--duration`, while 127.0.0.4
         tries 15 keys never used before (each one's first check: a Redis
         lookup and argon2id), one try each, spread over the phase; the
         cached key is sampled again (its figures include the cores the
         newcomers' argon2id takes, which is not the flood's doing).

Two changes to the stack, so that what is measured is the gateway: the
example's per-key and per-address limits are raised (the sampling would be
rate limited by the second second), and the demo upstream answers with
TCP_NODELAY (it writes headers and body apart, and the body would wait ~40 ms
for HAProxy's delayed ACK).

Target (the issue): the cached key's p99 during the flood within 2x + 5 ms
of the quiet p99, and the keys never used before get in. Prints a summary
and one JSON object. Runs on two shared cores as well: the flood's own
process competes for them, as in the figures the issue quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import cpu_seconds  # noqa: E402 (the process and its descendants)
from spoa_agent.auth import SecretHasher  # noqa: E402 (after the path above)
from spoa_agent.auth.keys import format_key, new_key_id, new_secret  # noqa: E402
from spoa_agent.demo.stack import (  # noqa: E402
    Gateway,
    gateway,
    haproxy_binaries,
    haproxy_version,
)
from spoa_agent.demo.upstream import UpstreamHandler, UpstreamServer  # noqa: E402
from spoa_agent.install.shipped import EXAMPLE_CONFIG  # noqa: E402
from spoa_agent.store.redis import sync_client  # noqa: E402
from spoa_agent.store.tokens import KeyRecord, TokenStore  # noqa: E402

CONFIG = EXAMPLE_CONFIG
UNLIMITED = {'per_key = "120/m"': 'per_key = "1000000/m"',
             'per_ip = "600/m"': 'per_ip = "1000000/m"'}
FLOODER, CLIENT, NEWCOMER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
SAMPLE_EVERY = 0.010
NEWCOMERS = 15
RESEND_AFTER = 0.5


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def new_key(store: TokenStore, hasher: SecretHasher, name: str) -> tuple[str, str]:
    key_id, secret = new_key_id(), new_secret()
    assert store.create(KeyRecord(key_id, name, hasher.hash(secret)))
    return key_id, format_key("spoa", key_id, secret)


def get(conn: http.client.HTTPConnection, token: str) -> int:
    conn.request("GET", "/api/tags", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    return response.status


def sample(port: int, token: str, duration: float) -> tuple[list[float], collections.Counter[int]]:
    """A cached key's latency (ms), one request every SAMPLE_EVERY s."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(CLIENT, 0))
    latencies, statuses = [], collections.Counter[int]()
    end = time.perf_counter() + duration
    while (started := time.perf_counter()) < end:
        statuses[get(conn, token)] += 1
        took = time.perf_counter() - started
        latencies.append(took * 1000)
        time.sleep(max(0.0, SAMPLE_EVERY - took))
    conn.close()
    return latencies, statuses


def newcomers(port: int, tokens: list[str], duration: float,
              out: collections.Counter[int]) -> None:
    """One try per key never used before, spread over `duration`."""
    for token in tokens:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                          source_address=(NEWCOMER, 0))
        out[get(conn, token)] += 1
        conn.close()
        time.sleep(duration / (len(tokens) + 1))


def flood_process(port: int, key_id: str, connections: int, duration: float,
                  ready: Any, results: Any) -> None:
    """Runs in its own process: `connections` keep-alive connections from
    FLOODER, each sending a wrong secret at once, then again RESEND_AFTER s
    after every answer, for `duration` s."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOODER, 0))

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(f"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                     f"Bearer {format_key('spoa', key_id, new_secret())}\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return status

    async def connection(start: asyncio.Event, end: list[float],
                         seen: collections.Counter[int]) -> None:
        # As an attacker would: a connection the gateway closes is opened again.
        stream = None
        with contextlib.suppress(OSError):  # opened again below
            stream = await connect()
        await start.wait()
        while time.monotonic() < end[0]:
            try:
                if stream is None:
                    stream = await connect()
                seen[await ask(*stream)] += 1
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                seen[0] += 1  # closed or refused by the gateway
                if stream is not None:
                    stream[1].close()
                stream = None
            await asyncio.sleep(RESEND_AFTER)
        if stream is not None:
            stream[1].close()

    async def main() -> collections.Counter[int]:
        seen: collections.Counter[int] = collections.Counter()
        start, end = asyncio.Event(), [0.0]
        tasks = [asyncio.create_task(connection(start, end, seen)) for _ in range(connections)]
        await asyncio.sleep(1.0)  # every connection open (most of them)
        ready.set()
        end[0] = time.monotonic() + duration
        start.set()
        await asyncio.sleep(duration + 1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return seen

    results.put(dict(asyncio.run(main())))


def summary(latencies: list[float]) -> dict[str, float]:
    return {"samples": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2)}


class OneSegment(UpstreamHandler):
    disable_nagle_algorithm = True


def run(haproxy: str, flood: int, duration: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="spoa-auth-flood-"))
    config = CONFIG.read_text()
    for shipped, raised in UNLIMITED.items():
        assert shipped in config, f"{CONFIG} no longer has {shipped}"
        config = config.replace(shipped, raised)
    (workdir / "agent.toml").write_text(config)
    with gateway(workdir, haproxy, workdir / "agent.toml") as gw:
        gw.processes.pop("upstream").stop()
        upstream = UpstreamServer(("127.0.0.1", gw.upstream_port), OneSegment)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        try:
            return measure(gw, flood, duration)
        finally:
            upstream.shutdown()
            upstream.server_close()


def measure(gw: Gateway, flood: int, duration: float) -> dict[str, Any]:
    store = TokenStore(sync_client(gw.redis_url))
    hasher = SecretHasher()  # the CLI's parameters, as the example config
    _, cached = new_key(store, hasher, "cached")
    target_id, _ = new_key(store, hasher, "brute-forced")
    fresh = [new_key(store, hasher, f"newcomer{i}")[1] for i in range(NEWCOMERS)]
    conn = http.client.HTTPConnection("127.0.0.1", gw.gateway_port, timeout=10,
                                      source_address=(CLIENT, 0))
    deadline = time.monotonic() + 20  # HAProxy's first check of the agent, Redis warming up
    while (status := get(conn, cached)) != 200:
        assert time.monotonic() < deadline, f"the valid key is refused ({status})"
        time.sleep(0.2)
    conn.close()
    quiet, quiet_statuses = sample(gw.gateway_port, cached, duration)

    ready, results = multiprocessing.Event(), multiprocessing.Queue()
    flooder = multiprocessing.Process(target=flood_process, args=(
        gw.gateway_port, target_id, flood, 2 * duration, ready, results))
    flooder.start()
    ready.wait(30)
    pids = {"haproxy": gw.processes["haproxy"].popen.pid,
            "agent": gw.processes["agent"].popen.pid, "flood client": flooder.pid or 0}
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    during, during_statuses = sample(gw.gateway_port, cached, duration)
    cpu = {name: round(cpu_seconds(pid) - cpu[name], 2) for name, pid in pids.items()}
    # Then the keys never used before: their argon2id checks are valid work
    # that takes the cores too, so the cached key is sampled apart from them.
    newcomer_statuses: collections.Counter[int] = collections.Counter()
    tries = threading.Thread(target=newcomers, args=(gw.gateway_port, fresh, duration,
                                                     newcomer_statuses))
    tries.start()
    with_newcomers, _ = sample(gw.gateway_port, cached, duration)
    tries.join()
    flood_statuses = results.get(timeout=60)
    flooder.join()
    reached_agent = collections.Counter(
        entry.get("event.reason") for entry in map(json.loads, gw.processes["agent"].log()
                                                   .splitlines())
        if entry.get("source.ip") == FLOODER)
    q, d, n = summary(quiet), summary(during), summary(with_newcomers)
    return {
        "flood_connections": flood, "duration_s": duration,
        "cached_key_quiet": {**q, "statuses": dict(quiet_statuses)},
        "cached_key_flood": {**d, "statuses": dict(during_statuses)},
        "p99_target_ms": round(2 * q["p99_ms"] + 5, 2),
        "p99_within_target": d["p99_ms"] <= 2 * q["p99_ms"] + 5,
        "cached_key_flood_and_newcomers": n,
        "uncached_keys_let_in": f"{newcomer_statuses[200]} of {NEWCOMERS}",
        "uncached_key_statuses": dict(newcomer_statuses),
        "flood_answers": {str(k): v for k, v in sorted(flood_statuses.items())},
        "cpu_seconds_during_flood": cpu,
        "flood_requests_the_agent_answered": dict(reached_agent),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/auth_flood.py",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--haproxy", default="2.6",
                        help="HAProxy binary, or a version found here: 2.6 (default) or 2.8")
    parser.add_argument("--flood", type=int, default=2000, help="flood connections (2000)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per phase (6)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.flood * 4 + 1024  # HAProxy (inherits it), the flood, the agent
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    haproxy = haproxy_binaries().get(args.haproxy, args.haproxy)
    result = {"haproxy": haproxy_version(haproxy), **run(haproxy, args.flood, args.duration)}
    q, d = result["cached_key_quiet"], result["cached_key_flood"]
    print(f"cached key, quiet:       p50 {q['p50_ms']:6.2f} ms  p99 {q['p99_ms']:6.2f} ms")
    print(f"cached key, flood:       p50 {d['p50_ms']:6.2f} ms  p99 {d['p99_ms']:6.2f} ms"
          f"  (target p99 <= {result['p99_target_ms']} ms: "
          f"{'met' if result['p99_within_target'] else 'NOT met'})")
    n = result["cached_key_flood_and_newcomers"]
    print(f"  same, while the newcomers' keys are checked: p50 {n['p50_ms']:6.2f} ms  "
          f"p99 {n['p99_ms']:6.2f} ms")
    print(f"uncached keys let in during the flood: {result['uncached_keys_let_in']}"
          f"  {result['uncached_key_statuses']}")
    print(f"flood answers by status: {result['flood_answers']}")
    print(f"flood requests the agent answered: {result['flood_requests_the_agent_answered']}")
    print(f"CPU seconds during the first {args.duration:g} s of the flood: "
          f"{result['cpu_seconds_during_flood']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
