"""Benchmark of spoa-agent: the SPOP codec alone, then the gateway under wrk.

    .venv/bin/python bench/run.py [--duration 10] [--connections 64] [--haproxy PATH]

1. Codec, in process: NOTIFY frames (a check-request as HAProxy sends it)
   decoded per second through AgentConnection, fed 100 pipelined frames per
   receive_data; ACK frames (the 4 variables the agent sets) encoded per second.
2. Through HAProxy, the same wrk load for every row:
   - HAProxy answering by itself (bench/haproxy-ceiling.cfg): the ceiling;
   - HAProxy asking the agent through the shipped SPOE engine, then answering
     by itself (bench/haproxy-spoe.cfg), with 1 and 2 agent workers.
   There is no upstream: only HAProxy, SPOE and the agent are measured.

Everything shares the machine: wrk, HAProxy (its default threads, one per
core) and the agent compete for the same cores, so compare rows, not machines.
Prints a markdown table and writes it as JSON to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, NoReturn

import structlog

from spoa_agent.auth import Authenticator, AuthSettings, Principal, SecretHasher, VerifierPool
from spoa_agent.auth.authenticator import principal_of, token_digest
from spoa_agent.auth.keys import format_key, new_key_id, new_secret
from spoa_agent.demo.stack import (
    REPO,
    Gateway,
    haproxy_binaries,
    haproxy_version,
    policy_only_config,
)
from spoa_agent.spop import (
    NEED_DATA,
    Ack,
    AgentConnection,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    encode_frame,
)
from spoa_agent.store.tokens import KeyRecord

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CEILING_CFG = BENCH / "haproxy-ceiling.cfg"
SPOE_CFG = BENCH / "haproxy-spoe.cfg"
AGENT_CONFIG = REPO / "config" / "agent.example.toml"
ALLOWED_PATH = "/api/tags"  # allowed by config/agent.example.toml
DENIED_PATH = "/api/pull"  # refused by it
WRK_THREADS = 2
BATCH = 100  # NOTIFY frames per receive_data


# --- codec ------------------------------------------------------------------


def notify_frame(stream_id: int = 1, frame_id: int = 1) -> bytes:
    """A NOTIFY carrying check-request as haproxy/spoe-agent.conf defines it."""
    message = Message("check-request", {
        "ip": IPv4Address("192.0.2.10"),
        "method": "POST",
        "host": "gateway.example.com",
        "path": "/v1/chat/completions",
        "user_agent": "OpenAI/Python 1.40.0",
    })
    return encode_frame(Notify(stream_id, frame_id, (message,)))


def ready_connection() -> AgentConnection:
    """An AgentConnection past HELLO, as after HAProxy's first frame."""
    conn = AgentConnection()
    conn.receive_data(encode_frame(HaproxyHello(("2.0",), 16380, frozenset({"pipelining"}))))
    assert type(conn.next_event()) is HaproxyHello
    return conn


def bench_decode(count: int) -> float:
    """NOTIFY frames decoded per second, BATCH pipelined frames per receive_data."""
    conn = ready_connection()
    batch = b"".join(notify_frame(1, i) for i in range(1, BATCH + 1))
    decoded = 0
    start = time.perf_counter()
    for _ in range(count // BATCH):
        conn.receive_data(batch)
        while conn.next_event() is not NEED_DATA:
            decoded += 1
    elapsed = time.perf_counter() - start
    assert decoded == count // BATCH * BATCH, decoded
    return decoded / elapsed


def bench_encode(count: int) -> float:
    """ACK frames encoded per second through AgentConnection.send (as the server does)."""
    conn = ready_connection()
    ack = Ack(1, 1, (
        SetVar("decision", "allow"),
        SetVar("status", 200),
        SetVar("reason", "allowed"),
        SetVar("rule", "openai-chat"),
    ))
    send = conn.send
    start = time.perf_counter()
    for _ in range(count):
        send(ack)
    return count / (time.perf_counter() - start)


def bench_keys(count: int) -> tuple[float, float]:
    """API keys verified per second: from the agent's cache, and cold with argon2id."""
    hasher = SecretHasher()
    key_id, secret = new_key_id(), new_secret()
    token = format_key("spoa", key_id, secret)
    auth = Authenticator(AuthSettings(), None, VerifierPool(hasher, 1),
                         structlog.wrap_logger(structlog.ReturnLogger()))
    record = KeyRecord(key_id=key_id, name="bench", hash=hasher.hash(secret))
    auth.verified.put(token_digest(token), principal_of(record), time.time())
    quick = auth.quick
    start = time.perf_counter()
    for _ in range(count):
        quick(token)
    cached = count / (time.perf_counter() - start)
    assert isinstance(quick(token), Principal)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        assert hasher.verify(record.hash, secret)
    cold = rounds / (time.perf_counter() - start)
    auth.verifier.close()
    return cached, cold


def bench_routes(count: int) -> dict[int, float]:
    """Nanoseconds per route decision with 10, 100 and 1,000 rules (exact paths,
    templates and prefixes in equal parts), looking up the last rule added."""
    from spoa_agent.policy import Route, RouteTable

    out = {}
    for size in (10, 100, 1000):
        routes = []
        for i in range(size):
            kind = i % 3
            path = (f"/r{i}/x", f"/t{i}/{{id}}", f"/p{i}/")[kind]
            routes.append(Route(path, frozenset({"GET"}), f"r{i}", prefix=kind == 2))
        table = RouteTable(tuple(routes))
        last = {kind: max(i for i in range(size) if i % 3 == kind) for kind in range(3)}
        probes = [f"/r{last[0]}/x", f"/t{last[1]}/abc", f"/p{last[2]}/deep/path",
                  "/nowhere/at/all"]
        start = time.perf_counter_ns()
        for _ in range(count // 10):
            for probe in probes:
                table.decide("GET", probe, "gw.example.com")
        out[size] = (time.perf_counter_ns() - start) / (count // 10 * len(probes))
    return out


def bench_logging(count: int) -> tuple[float, float]:
    """Nanoseconds per log call: a filtered debug call, and a JSON denial line."""
    from spoa_agent import logging as agent_logging

    sink = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    agent_logging.configure("info", sink)
    log = agent_logging.get_logger()
    fields = {"ip": "192.0.2.7", "reason": "route_not_allowed", "method": "POST",
              "host": "gw.example.com", "path": "/api/pull", "user_agent": "curl/8",
              "status": 403, "duration": 12345}
    start = time.perf_counter_ns()
    for _ in range(count):
        log.debug("policy_denied", **fields)
    filtered = (time.perf_counter_ns() - start) / count
    start = time.perf_counter_ns()
    for _ in range(count // 10):
        log.warning("policy_denied", **fields)
    emitted = (time.perf_counter_ns() - start) / (count // 10)
    structlog.reset_defaults()
    sink.close()
    return filtered, emitted


# --- wrk --------------------------------------------------------------------


@dataclass
class Row:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int = 0
    redis_per_request: float | None = None  # script calls and lookups per request
    ratio: float = 1.0


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _percentile_ms(out: str, percent: int) -> float:
    match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
    if match is None:
        raise ValueError(f"no {percent}% latency in wrk output:\n{out}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(name: str, out: str) -> Row:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{out}")
    # wrk counts status >= 400 here, whatever the line says.
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    return Row(
        name=name,
        requests=int(total.group(1)) if total else 0,
        requests_per_s=float(rate.group(1)),
        p50_ms=_percentile_ms(out, 50),
        p99_ms=_percentile_ms(out, 99),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk_argv(url: str, duration: int, connections: int,
             headers: dict[str, str] | None = None) -> list[str]:
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    return ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--latency",
            *extra, url]


def run_wrk(name: str, url: str, duration: int, connections: int,
            headers: dict[str, str] | None = None) -> Row:
    out = subprocess.run(wrk_argv(url, duration, connections, headers), capture_output=True,
                         text=True, check=True, timeout=duration + 30).stdout
    return parse_wrk(name, out)


# --- the gateway ------------------------------------------------------------


def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def expect_status(url: str, expected: int, headers: dict[str, str],
                  timeout: float = 10.0) -> None:
    """Wait until `url` answers `expected` (the first SPOE connection takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got: int | str = status_of(url, headers)
        except OSError as err:
            got = str(err)
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET {url}: expected {expected}, got {got}")
        time.sleep(0.2)


@dataclass(frozen=True)
class Plan:
    name: str
    workers: int | None = None  # None: HAProxy alone (the ceiling)
    api_key: bool = False  # False: keys off, the agent only matches routes (trivial handler)
    limits: bool = False  # three limits per request (key, address, global), never reached


NO_LIMIT = '""'
HIGH = '"100000000/m"'  # checked on every request, never refusing


def agent_config(plan: Plan, workdir: Path) -> Path:
    """The example config, with keys and the three limits switched as the row says."""
    if not plan.api_key:
        return policy_only_config(AGENT_CONFIG, workdir / "policy-only.toml")
    text = AGENT_CONFIG.read_text()
    value = HIGH if plan.limits else NO_LIMIT
    text = re.sub(r'^(per_key|per_ip) = ".*"', rf"\1 = {value}", text, flags=re.M)
    text = text.replace('# global = "3000/m"', f"global = {value}")
    path = workdir / "agent.toml"
    path.write_text(text)
    return path


# What the agent sends on the request path. Commands a script runs inside
# Redis (GET, SET, TIME, ...) show in commandstats too, but cost no round trip.
ROUND_TRIP_COMMANDS = {"evalsha", "eval", "hgetall"}


def redis_round_trips(gateway: Gateway) -> int:
    """Commands the agent has sent Redis so far (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "-p", str(gateway.redis_port), "info", "commandstats"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return sum(int(calls) for name, calls in re.findall(r"cmdstat_(\w+):calls=(\d+)", out)
               if name in ROUND_TRIP_COMMANDS)


def bench_gateway(plan: Plan, haproxy: str, workdir: Path, duration: int,
                  connections: int) -> Row:
    """One wrk row, with its own Redis, agent and HAProxy."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    gateway = Gateway(workdir)
    headers: dict[str, str] = {}
    try:
        if plan.workers is None:
            gateway.start_haproxy(haproxy, CEILING_CFG)
        else:
            config = agent_config(plan, workdir)
            if plan.api_key:
                gateway.start_redis()
                created = gateway.spoa_agent("token", "create", "--name", "bench",
                                             "--format", "json")
                headers = {"Authorization": f"Bearer {json.loads(created.stdout)['token']}"}
            gateway.start_agent(config, plan.workers)  # before HAProxy's first check
            gateway.start_haproxy(haproxy, SPOE_CFG)
            expect_status(gateway.url + DENIED_PATH, 403, headers)
        # The first allowed request pays argon2id once; wrk then hits the cache.
        expect_status(gateway.url + ALLOWED_PATH, 200, headers)
        before = redis_round_trips(gateway) if plan.api_key else 0
        row = run_wrk(plan.name, gateway.url + ALLOWED_PATH, duration, connections, headers)
        if plan.api_key and row.requests:
            row.redis_per_request = (redis_round_trips(gateway) - before) / row.requests
        for proc in gateway.processes.values():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited during the run; see {proc.log_path}")
        return row
    except Exception:
        print(f"failed; logs in {workdir}", file=sys.stderr)
        raise
    finally:
        gateway.stop()


# --- report -----------------------------------------------------------------


def markdown(rows: list[Row]) -> str:
    lines = [
        "| row | req/s | p50 ms | p99 ms | non-2xx | Redis calls/req | ratio to ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        redis_calls = "-" if row.redis_per_request is None else f"{row.redis_per_request:.2f}"
        lines.append(f"| {row.name} | {row.requests_per_s:,.0f} | {row.p50_ms:.2f} | "
                     f"{row.p99_ms:.2f} | {row.non_2xx} | {redis_calls} | {row.ratio:.2f} |")
    return "\n".join(lines)


def pick_haproxy(choice: str | None) -> str:
    """A path, a version found here ("2.8"), or by default Debian's 2.6."""
    found = haproxy_binaries()
    if choice is None:
        return found.get("2.6") or "/usr/sbin/haproxy"
    return found.get(choice, choice)


def _exit_on_sigterm(signum: int, _frame: object) -> NoReturn:
    sys.exit(128 + signum)  # unwinds through the finally blocks that stop processes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per row (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--haproxy", default=None,
                        help="HAProxy binary, or a version found here such as 2.8 "
                             "(default: Debian's 2.6)")
    parser.add_argument("--count", type=int, default=200_000, help="codec frames (200000)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    haproxy = pick_haproxy(args.haproxy)
    version = haproxy_version(haproxy)
    cpus = os.cpu_count()
    load = os.getloadavg()[0]  # other work on the machine skews every figure
    print(f"codec: {args.count} frames each ...", flush=True)
    decode_rate = bench_decode(args.count)
    encode_rate = bench_encode(args.count)
    print(f"  NOTIFY decoded: {decode_rate:,.0f}/s (AgentConnection, {BATCH} frames per read)")
    print(f"  ACK encoded:    {encode_rate:,.0f}/s (4 SetVar)")
    route_ns = bench_routes(args.count)
    print("route decision: " + ", ".join(f"{n:,} rules {ns:,.0f} ns"
                                         for n, ns in route_ns.items()))
    filtered_ns, line_ns = bench_logging(args.count)
    print(f"logging: {filtered_ns:,.0f} ns per filtered debug call, "
          f"{line_ns / 1000:,.1f} us per JSON line written")
    cached_rate, cold_rate = bench_keys(args.count)
    print(f"keys verified: {cached_rate:,.0f}/s cached (Authenticator.quick), "
          f"{cold_rate:,.1f}/s cold (argon2id, one thread)")

    wrk = " ".join(wrk_argv(f"http://127.0.0.1:PORT{ALLOWED_PATH}", args.duration,
                            args.connections))
    print(f"\nHAProxy {version} ({haproxy}), {cpus} CPUs shared by wrk, HAProxy and the agent;"
          f" load average before the run: {load:.2f}")
    print(f"load per row: {wrk}", flush=True)
    plans = [
        Plan("haproxy answers itself"),
        Plan("SPOE + agent, trivial handler (routes only)", workers=1),
        Plan("SPOE + agent, cached API key + route, no limits", workers=1, api_key=True),
        Plan("SPOE + agent, cached key + route + 3 limits, 1 worker", workers=1, api_key=True,
             limits=True),
        Plan("SPOE + agent, cached key + route + 3 limits, 2 workers", workers=2,
             api_key=True, limits=True),
    ]
    rows = []
    for index, plan in enumerate(plans):
        print(f"  {plan.name} ...", flush=True)
        workdir = RESULTS / "logs" / f"row{index}"
        rows.append(bench_gateway(plan, haproxy, workdir, args.duration, args.connections))
    ceiling = rows[0].requests_per_s
    for row in rows:
        row.ratio = row.requests_per_s / ceiling if ceiling else 0.0

    print()
    print(markdown(rows))
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": cpus, "load_average_1m_before": load,
                    "python": platform.python_version(), "haproxy": version,
                    "haproxy_binary": haproxy},
        "codec": {"frames": args.count, "notify_decoded_per_s": decode_rate,
                  "ack_encoded_per_s": encode_rate, "notify_batch": BATCH},
        "keys": {"cached_per_s": cached_rate, "argon2id_per_s": cold_rate},
        "logging": {"filtered_debug_ns": filtered_ns, "json_line_ns": line_ns},
        "route_decision_ns_by_rules": route_ns,
        "wrk": wrk,
        "rows": [asdict(row) for row in rows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'latest.json'}")

    bad = [row.name for row in rows if row.non_2xx or row.socket_errors]
    if bad:
        print(f"error: non-2xx responses or socket errors in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def run() -> int:
    """main() with a short message instead of a traceback on Ctrl-C."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
