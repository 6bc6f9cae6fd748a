"""Benchmark of spoa-agent: the engine in process, then the gateway under load.

    .venv/bin/python bench/run.py [--duration 10] [--connections 64] [--haproxy PATH]
                                  [--c-agent '/opt/spoa-example/spoa']
    .venv/bin/python bench/run.py --soak SECONDS [--workers N]

1. In process, no network: NOTIFY frames (a check-request as HAProxy sends
   it) decoded per second through AgentConnection, 100 pipelined frames per
   receive_data; ACK frames encoded per second; route decisions, log calls,
   cached and argon2id key checks; and decisions/s of the check-request
   handler alone (routes only, cached key, cached key + 3 limits, a JWT + 3
   limits), Redis's answer stood in for in process.
2. Real HAProxy, Redis, agent and wrk, the same wrk load for every row
   (-t2 -c64 -d10s --latency, no upstream: HAProxy answers itself):
   - HAProxy alone (bench/haproxy-ceiling.cfg): the ceiling;
   - HAProxy's own jwt_verify of an RS256 token + three stick-table rate
     limits (bench/haproxy-native.cfg): what an admin could configure instead;
   - SPOE to HAProxy's minimal C example agent (bench/haproxy-c-agent.cfg),
     only with --c-agent: with pipelining (-c pipelining), the reference
     row, then with its defaults (one frame at a time per connection). It
     is built outside this repository, see bench/README.md; without it the
     table says the rows were not run;
   - SPOE to the agent (bench/haproxy-spoe.cfg, the shipped SPOE engine):
     trivial handler (routes only); cached API key + route; cached key +
     route + 3 Redis limits with 1 and N workers; a JWT + route + 3 limits.
   Each row: req/s, p50 and p99 latency, ratio to the pipelined C agent, to
   the ceiling and to the native row, and the CPU time per request of the
   agent (with its worker processes), HAProxy and Redis, from /proc/PID/stat
   before and after the wrk run. The RS256 key pair and token are made at
   bench time in a temporary directory.
3. Latency at a fixed rate (bench/openloop.py, open loop): HAProxy alone and
   the full agent path at half and a quarter of the pipelined C agent's
   req/s (the issue's 31k when not run) and at half the full path's own;
   the median the agent adds. wrk cannot hold a rate and wrk2 is not
   packaged here; a rate the Python generator cannot offer HAProxy alone is
   lowered to what it sustains, and the output says so.
4. The issue's targets against this run's figures.

--soak SECONDS runs only the full agent path (cached key + 3 limits, --workers
N) under wrk for SECONDS and samples the agent's resident memory (VmRSS of the
agent and its worker processes, from /proc) every 10 s: start, end, max and
the change, written to bench/results/soak.json.

Everything shares the machine: the load generator, HAProxy (its default
threads, one per core), Redis and the agent compete for the same cores, so
compare rows, not machines. Prints markdown tables and writes them as JSON to
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal, NoReturn

import structlog

from spoa_agent.auth import Authenticator, AuthSettings, Principal, SecretHasher, VerifierPool
from spoa_agent.auth.authenticator import principal_of, token_digest
from spoa_agent.auth.keys import format_key, new_key_id, new_secret
from spoa_agent.demo.stack import (
    Gateway,
    free_port,
    haproxy_binaries,
    haproxy_version,
    policy_only_config,
    spawn,
    wait_for_port,
)
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.server import Actions, Handler, Later
from spoa_agent.spop import (
    NEED_DATA,
    Ack,
    AgentConnection,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    decode_frame,
    encode_frame,
)
from spoa_agent.store.tokens import KeyRecord

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CEILING_CFG = BENCH / "haproxy-ceiling.cfg"
NATIVE_CFG = BENCH / "haproxy-native.cfg"
C_AGENT_CFG = BENCH / "haproxy-c-agent.cfg"
SPOE_CFG = BENCH / "haproxy-spoe.cfg"
AGENT_CONFIG = EXAMPLE_CONFIG
ALLOWED_PATH = "/api/tags"  # allowed by the example config
DENIED_PATH = "/api/pull"  # refused by it
WRK_THREADS = 2
BATCH = 100  # NOTIFY frames per receive_data
C_AGENT_ROW = "SPOE + HAProxy's C example agent (spoa-example)"
C_AGENT_PIPELINING = ("-c", "pipelining")  # the reference row's own options
ISSUE_C_AGENT_RPS = 31_000.0  # the issue's figure for the C agent on this machine


# --- codec ------------------------------------------------------------------


def notify_frame(stream_id: int = 1, frame_id: int = 1) -> bytes:
    """A NOTIFY carrying check-request as haproxy/spoe-agent.conf defines it,
    for a GET with a bearer key (a fetch that finds nothing travels as NULL)."""
    message = Message("check-request", {
        "ip": IPv4Address("192.0.2.10"),
        "method": "GET",
        "host": "gateway.example.com",
        "path": "/v1/models",
        "user_agent": "OpenAI/Python 1.40.0",
        # BINARY, as HAProxy sends it once bytes() has cut it (spoe-agent.conf).
        "authorization": b"Bearer spoa_8SisitSArGki_" + b"x" * 32,
        "api_key": None,
        "content_length": None,
        "transfer_encoding": None,
        "content_encoding": None,
        "body": b"",
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


# --- credentials and agent configs --------------------------------------------


@dataclass(frozen=True)
class JwtIssuer:
    """An identity provider made up at bench time: its RS256 public key (PEM,
    for HAProxy's jwt_verify and the agent alike) and one token it signed."""

    pem_file: Path
    token: str
    issuer: str = "https://id.example.com/"
    audience: str = "ai-gateway"
    subject: str = "bench-user"


def make_jwt_issuer(directory: Path, lifetime: float = 7200.0) -> JwtIssuer:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_file = directory / "issuer-public.pem"
    pem_file.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    template = JwtIssuer(pem_file, "")
    now = int(time.time())
    token = jwt.encode({"iss": template.issuer, "aud": template.audience,
                        "sub": template.subject, "iat": now, "exp": now + int(lifetime)},
                       key, algorithm="RS256")
    return replace(template, token=token)


Kind = Literal["ceiling", "native", "c-agent", "agent"]
Credential = Literal["none", "key", "jwt"]


@dataclass(frozen=True)
class Plan:
    name: str
    kind: Kind = "agent"
    workers: int = 1
    credential: Credential = "none"  # none: keys off, the agent only matches routes
    limits: bool = False  # three limits per request (key, address, global), never reached
    pipelining: bool = False  # the C agent only: run with -c pipelining (the reference row)

    @property
    def uses_redis(self) -> bool:
        return self.kind == "agent" and self.credential != "none"


NO_LIMIT = '""'
HIGH = '"100000000/m"'  # checked on every request, never refusing


def agent_config(plan: Plan, workdir: Path, issuer: JwtIssuer) -> Path:
    """The example config, with keys, the JWT issuer and the three limits
    switched as the row says."""
    if plan.credential == "none":
        return policy_only_config(AGENT_CONFIG, workdir / "policy-only.toml")
    text = AGENT_CONFIG.read_text()
    value = HIGH if plan.limits else NO_LIMIT
    text = re.sub(r'^(per_key|per_ip) = ".*"', rf"\1 = {value}", text, flags=re.M)
    text = text.replace('# global = "3000/m"', f"global = {value}")
    if plan.credential == "jwt":
        text += (f'\n[[jwt.issuers]]\nissuer = "{issuer.issuer}"\n'
                 f'audience = "{issuer.audience}"\nalgorithms = ["RS256"]\n'
                 f'pem_file = "{issuer.pem_file}"\n')
    path = workdir / "agent.toml"
    path.write_text(text)
    return path


# --- the engine alone ---------------------------------------------------------


class _InstantRedis:
    """Stands in for the limiter's Redis client: every script call (one
    gcra_batch.lua call per batch of requests) admits at once, so the engine
    is timed without a network round trip."""

    async def evalsha(self, _sha: str, _numkeys: int, *keys_and_args: object) -> str:
        # gcra_batch.lua's ARGV[1]: per request "n", then two numbers per limit;
        # its answer: per request "1" (admitted), the tightest limit's index,
        # its remaining and reset_us.
        numbers = str(keys_and_args[-1]).split()
        out, at = [], 0
        while at < len(numbers):
            limits = int(numbers[at])
            out += ["1", "0", "100", "1000000"]
            at += 1 + 2 * limits
        return " ".join(out)


def bench_engine(count: int, issuer: JwtIssuer, workdir: Path) -> dict[str, float]:
    """Decisions per second of the check-request handler alone (the one the
    server registers), in process: no SPOP, no HAProxy, Redis answered at once."""
    from spoa_agent.app import CHECK_REQUEST, RequestChecker
    from spoa_agent.config import load_config
    from spoa_agent.ratelimit.limiter import RateLimiter
    from spoa_agent.spop import Value

    quiet = structlog.wrap_logger(structlog.ReturnLogger())
    workdir.mkdir(parents=True, exist_ok=True)
    key_id, secret = new_key_id(), new_secret()
    api_key = format_key("spoa", key_id, secret)
    out: dict[str, float] = {}
    plans = [
        Plan("routes only (trivial handler)"),
        Plan("cached key + route", credential="key"),
        Plan("cached key + route + 3 limits", credential="key", limits=True),
        Plan("JWT (RS256) + route + 3 limits", credential="jwt", limits=True),
    ]
    for plan in plans:
        config = load_config(agent_config(plan, workdir, issuer))
        auth = None
        if config.auth.required:
            auth = Authenticator(config.auth, None, VerifierPool(SecretHasher(), 1), quiet)
            record = KeyRecord(key_id=key_id, name="bench", hash="unused")
            auth.verified.put(token_digest(api_key), principal_of(record), time.time())
        checker = RequestChecker(config, auth, quiet)
        if plan.limits:
            checker.limiter = RateLimiter(_InstantRedis(), quiet)  # type: ignore[arg-type]
        handle = checker
        token = issuer.token if plan.credential == "jwt" else api_key
        args: dict[str, Value] = {
            "ip": IPv4Address("192.0.2.10"), "method": "GET", "host": "gateway.example.com",
            "path": ALLOWED_PATH, "user_agent": "OpenAI/Python 1.40.0",
            "authorization": f"Bearer {token}", "api_key": None, "content_length": None,
            "transfer_encoding": None, "content_encoding": None, "body": b"",
        }
        message = Message(CHECK_REQUEST, args)
        rounds = count // 10 if plan.credential == "jwt" else count
        out[plan.name] = _decisions_per_s(handle, message, rounds)
        if auth is not None:
            auth.verifier.close()
    return out


def _decisions_per_s(handle: Handler, message: Message, rounds: int) -> float:
    """Calls `handle` `rounds` times in an event loop, 64 at a time, as the
    server does: an answer ready at once is used at once, the ones that must
    wait (the limits) are waited for together: answers given Later through
    one callback that counts them, awaitables with gather. The first answer
    must be allow."""
    import asyncio

    async def answered(laters: list[Later]) -> Actions:
        """Waits until every Later is answered; the last answer."""
        done: asyncio.Future[Actions] = asyncio.get_running_loop().create_future()
        left = len(laters)

        def count(actions: Actions) -> None:
            nonlocal left
            left -= 1
            if not left:
                done.set_result(actions)

        for later in laters:
            later.then(count)
        return await done

    async def first() -> Actions:
        result = handle(message)
        if isinstance(result, Sequence):
            return result
        if isinstance(result, Later):
            return await answered([result])
        return await result

    async def all_rounds() -> float:
        # As HAProxy reads it: the answer's variables through the codec.
        ack = decode_frame(encode_frame(Ack(1, 1, tuple(await first())))[4:])
        assert isinstance(ack, Ack)
        variables = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
        if variables.get("decision") != "allow":
            raise RuntimeError(f"the engine did not allow the bench request: {variables}")
        start = time.perf_counter()
        for _ in range(rounds // 64):
            laters: list[Later] = []
            waiting = []
            for _ in range(64):
                result = handle(message)
                if isinstance(result, Sequence):
                    continue
                if isinstance(result, Later):
                    laters.append(result)
                else:
                    waiting.append(result)
            if laters:
                await answered(laters)
            if waiting:
                await asyncio.gather(*waiting)
        return rounds // 64 * 64 / (time.perf_counter() - start)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(all_rounds())
    return uvloop.run(all_rounds())


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
    kind: str = "agent"  # Plan.kind, credential, limits and workers: what the row ran
    credential: str = "none"
    limits: bool = False
    workers: int = 0
    pipelining: bool = False
    redis_per_request: float | None = None  # script calls and lookups per request
    # CPU time per request (utime + stime from /proc, microseconds); None when
    # the row runs no such process.
    agent_cpu_us: float | None = None
    haproxy_cpu_us: float | None = None
    redis_cpu_us: float | None = None
    ratio: float = 1.0  # to the ceiling
    ratio_to_native: float | None = None
    ratio_to_c_agent: float | None = None  # to the pipelined C agent row


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


# What the agent sends on the request path. Commands a script runs inside
# Redis (GET, SET, TIME, ...) show in commandstats too, but cost no round trip.
ROUND_TRIP_COMMANDS = {"evalsha", "eval", "hgetall"}


def redis_round_trips(gateway: Gateway) -> int:
    """Commands the agent has sent Redis so far (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "-p", str(gateway.redis_port), "info", "commandstats"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return sum(int(calls) for name, calls in re.findall(r"cmdstat_(\w+):calls=(\d+)", out)
               if name in ROUND_TRIP_COMMANDS)


@dataclass
class BenchGateway(Gateway):
    """The demo's Gateway, with the bench configs' own environment variables."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def haproxy_env(self) -> dict[str, str]:
        return {**super().haproxy_env(), **self.extra_env}


@dataclass(frozen=True)
class Setup:
    """What every row shares: the HAProxy binary, the JWT issuer, the C agent."""

    haproxy: str
    issuer: JwtIssuer
    c_agent: tuple[str, ...] | None = None  # its argv, without -p PORT


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_c_agent(gateway: Gateway, argv: list[str], workdir: Path, attempts: int = 5) -> None:
    """The C agent on gateway.agent_port. It binds that port on every
    interface, where a port free on loopback a moment ago can be taken by
    then (the rows before leave many connections behind): it is started
    again on another port when its bind fails."""
    for attempt in range(attempts):
        proc = spawn("c-agent", [*argv, "-p", str(gateway.agent_port)], workdir)
        gateway.processes["c-agent"] = proc
        try:
            wait_for_port(gateway.agent_port, proc.popen)
            return
        except RuntimeError:
            if attempt == attempts - 1 or "Address already in use" not in proc.log():
                raise
            gateway.agent_port = free_port()


@contextlib.contextmanager
def running(plan: Plan, setup: Setup, workdir: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """The processes of one row, started on free ports and checked with one
    request: yields the gateway and the headers every request must carry."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    issuer = setup.issuer
    gateway = BenchGateway(workdir, extra_env={
        "JWT_PUBKEY": str(issuer.pem_file), "JWT_ISSUER": issuer.issuer,
        "JWT_AUDIENCE": issuer.audience})
    headers: dict[str, str] = {}
    try:
        if plan.kind == "ceiling":
            gateway.start_haproxy(setup.haproxy, CEILING_CFG)
        elif plan.kind == "native":
            headers = bearer(issuer.token)
            gateway.start_haproxy(setup.haproxy, NATIVE_CFG)
            expect_status(gateway.url + ALLOWED_PATH, 401, {})  # it does check
        elif plan.kind == "c-agent":
            assert setup.c_agent is not None
            options = C_AGENT_PIPELINING if plan.pipelining else ()
            start_c_agent(gateway, [*setup.c_agent, *options], workdir)
            gateway.start_haproxy(setup.haproxy, C_AGENT_CFG)
        else:
            config = agent_config(plan, workdir, issuer)
            if plan.uses_redis:
                gateway.start_redis()
            if plan.credential == "key":
                created = gateway.spoa_agent("token", "create", "--name", "bench",
                                             "--format", "json")
                headers = bearer(json.loads(created.stdout)["token"])
            elif plan.credential == "jwt":
                headers = bearer(issuer.token)
            gateway.start_agent(config, plan.workers)  # before HAProxy's first check
            gateway.start_haproxy(setup.haproxy, SPOE_CFG)
            expect_status(gateway.url + DENIED_PATH, 403, headers)
        # The first allowed request pays argon2id once; the load then hits the cache.
        expect_status(gateway.url + ALLOWED_PATH, 200, headers)
        yield gateway, headers
        for proc in gateway.processes.values():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited during the run; see {proc.log_path}")
    except Exception:
        print(f"failed; logs in {workdir}", file=sys.stderr)
        raise
    finally:
        gateway.stop()


CPU_ROLES = {"agent": ("agent", "c-agent"), "haproxy": ("haproxy",), "redis": ("redis",)}


def cpu_seconds(pid: int) -> float:
    """CPU time so far of `pid` and its descendants (every thread of each):
    utime + stime, plus cutime + cstime for children already reaped."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks += sum(int(n) for n in fields[11:15])  # fields 14-17 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_by_role(gateway: Gateway) -> dict[str, float]:
    """CPU seconds so far of the row's agent (ours or the C one), HAProxy and
    Redis, for those the row runs."""
    out = {}
    for role, names in CPU_ROLES.items():
        for name in names:
            if name in gateway.processes:
                out[role] = cpu_seconds(gateway.processes[name].popen.pid)
    return out


def bench_row(plan: Plan, setup: Setup, workdir: Path, duration: int,
              connections: int) -> Row:
    """One wrk row, with its own processes."""
    with running(plan, setup, workdir) as (gateway, headers):
        before = redis_round_trips(gateway) if plan.uses_redis else 0
        cpu_before = cpu_by_role(gateway)
        row = run_wrk(plan.name, gateway.url + ALLOWED_PATH, duration, connections, headers)
        cpu_after = cpu_by_role(gateway)
        row.kind, row.credential, row.limits = plan.kind, plan.credential, plan.limits
        row.workers = plan.workers if plan.kind == "agent" else 0
        row.pipelining = plan.pipelining
        if plan.uses_redis and row.requests:
            row.redis_per_request = (redis_round_trips(gateway) - before) / row.requests
        if row.requests:
            per_request = {role: (cpu_after[role] - cpu_before[role]) / row.requests * 1e6
                           for role in cpu_before}
            row.agent_cpu_us = per_request.get("agent")
            row.haproxy_cpu_us = per_request.get("haproxy")
            row.redis_cpu_us = per_request.get("redis")
    return row


# --- latency at a fixed rate --------------------------------------------------


@dataclass
class FixedRate:
    path: str
    offered_per_s: float
    achieved_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    unanswered: int  # still waiting when the generator gave up

    @property
    def kept_up(self) -> bool:
        return self.achieved_per_s >= 0.99 * self.offered_per_s and not self.unanswered


def open_loop(path: str, url: str, rate: float, duration: int, connections: int,
              headers: dict[str, str]) -> FixedRate:
    """bench/openloop.py at `rate` requests/s, in its own process."""
    argv = [sys.executable, str(BENCH / "openloop.py"), url, "--rate", f"{rate:.0f}",
            "--duration", str(duration), "--connections", str(connections)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode:
        raise RuntimeError(f"bench/openloop.py failed at {rate:.0f} req/s:\n{done.stderr}")
    out = json.loads(done.stdout)
    statuses = {int(status): n for status, n in out["statuses"].items()}
    return FixedRate(path, rate, out["achieved_per_s"], out["latency_ms"]["p50"],
                     out["latency_ms"]["p99"],
                     sum(n for status, n in statuses.items() if status >= 300), out["unanswered"])


def bench_fixed_rates(rates: list[float], setup: Setup, duration: int,
                      connections: int) -> tuple[list[FixedRate], list[str]]:
    """HAProxy alone, then the full agent path, each at every rate; a rate the
    generator cannot offer HAProxy alone is lowered to what it sustains."""
    ceiling = Plan("HAProxy answers itself", kind="ceiling")
    agent = Plan("full agent path (cached key + route + 3 limits, 1 worker)",
                 credential="key", limits=True)
    results: list[FixedRate] = []
    notes: list[str] = []
    sustained: list[float] = []
    with running(ceiling, setup, RESULTS / "logs" / "fixed-ceiling") as (gateway, headers):
        url = gateway.url + ALLOWED_PATH
        for rate in rates:
            print(f"  {ceiling.name} at {rate:,.0f} req/s ...", flush=True)
            result = open_loop(ceiling.name, url, rate, duration, connections, headers)
            if not result.kept_up:
                lower = math.floor(result.achieved_per_s * 0.95 / 100) * 100
                notes.append(f"the generator sustained {result.achieved_per_s:,.0f} of "
                             f"{rate:,.0f} req/s asked: measured at {lower:,} req/s instead")
                print(f"  {notes[-1]}", flush=True)
                rate = float(lower)
                result = open_loop(ceiling.name, url, rate, duration, connections, headers)
            sustained.append(rate)
            results.append(result)
    with running(agent, setup, RESULTS / "logs" / "fixed-agent") as (gateway, headers):
        for rate in sustained:
            print(f"  {agent.name} at {rate:,.0f} req/s ...", flush=True)
            results.append(open_loop(agent.name, gateway.url + ALLOWED_PATH, rate, duration,
                                     connections, headers))
    return results, notes


# --- soak -------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (the agent's --workers children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes together (VmRSS, KiB)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total


SOAK_SAMPLE = 10.0  # seconds between RSS samples


def soak(seconds: int, workers: int, setup: Setup, connections: int) -> dict[str, Any]:
    """The full agent path under wrk for `seconds`, the agent's RSS sampled."""
    plan = Plan(f"full agent path (cached key + route + 3 limits, {workers} worker"
                f"{'s' if workers > 1 else ''})", credential="key", limits=True,
                workers=workers)
    with running(plan, setup, RESULTS / "logs" / "soak") as (gateway, headers):
        agent_pid = gateway.processes["agent"].popen.pid
        idle = rss_kib(process_tree(agent_pid))
        wrk = subprocess.Popen(wrk_argv(gateway.url + ALLOWED_PATH, seconds, connections,
                                        headers), stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        try:
            while True:
                pids = process_tree(agent_pid)
                samples.append((time.monotonic() - started, rss_kib(pids)))
                print(f"  {samples[-1][0]:5.0f} s  RSS {samples[-1][1] / 1024:7.1f} MiB "
                      f"({len(pids)} processes)", flush=True)
                try:
                    wrk.wait(timeout=SOAK_SAMPLE)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out, _ = wrk.communicate()
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        samples.append((time.monotonic() - started, rss_kib(process_tree(agent_pid))))
        row = parse_wrk(plan.name, out)
    start, end = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    warm = samples[1][1] if len(samples) > 2 else start  # after the first 10 s of load
    return {
        "plan": plan.name, "seconds": seconds, "workers": workers,
        "rss_kib_idle_before_load": idle, "rss_kib_start": start, "rss_kib_end": end,
        "rss_kib_max": peak, "change_percent": (end - start) / start * 100,
        "change_percent_after_first_sample": (end - warm) / warm * 100,
        "samples": [{"t": round(t, 1), "rss_kib": rss} for t, rss in samples],
        "wrk": asdict(row),
    }


# --- report -----------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def c_agent_plans() -> list[Plan]:
    return [Plan(f"{C_AGENT_ROW}, pipelining (-c pipelining)", kind="c-agent",
                 pipelining=True),
            Plan(f"{C_AGENT_ROW}, its defaults (no pipelining)", kind="c-agent")]


def reference_row(rows: list[Row]) -> Row | None:
    """The pipelined C agent row, which the ratios and targets are to."""
    return next((row for row in rows if row.kind == "c-agent" and row.pipelining), None)


def markdown(rows: list[Row], c_agent_missing: bool) -> str:
    lines = [
        "| row | req/s | p50 ms | p99 ms | ratio to C agent (pipelining) | ratio to ceiling "
        "| ratio to native | non-2xx | Redis calls/req | agent CPU us/req | HAProxy CPU us/req "
        "| Redis CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.name} | {row.requests_per_s:,.0f} | {row.p50_ms:.2f} | "
                     f"{row.p99_ms:.2f} | {_ratio(row.ratio_to_c_agent)} | {row.ratio:.2f} | "
                     f"{_ratio(row.ratio_to_native)} | {row.non_2xx + row.socket_errors} | "
                     f"{_ratio(row.redis_per_request)} | {_cpu(row.agent_cpu_us)} | "
                     f"{_cpu(row.haproxy_cpu_us)} | {_cpu(row.redis_cpu_us)} |")
        if c_agent_missing and row.kind == "native":
            lines += [f"| {plan.name}: not run (--c-agent PATH, see bench/README.md) "
                      f"|{' - |' * 11}" for plan in c_agent_plans()]
    return "\n".join(lines)


def fixed_rate_markdown(results: list[FixedRate]) -> str:
    lines = ["| path | offered req/s | achieved req/s | p50 ms | p99 ms | kept up |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.path} | {r.offered_per_s:,.0f} | {r.achieved_per_s:,.0f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{'yes' if r.kept_up else 'no: latency includes the queue'} |")
    return "\n".join(lines)


def _ratio_target(row: Row) -> float | None:
    """The issue's req/s target for an agent row, as a ratio to the C agent
    with pipelining: the trivial handler 0.85, the full path 0.50 (any
    number of workers), with a JWT instead of a key 0.40."""
    if row.kind != "agent":
        return None
    if row.credential == "none":
        return 0.85
    if row.limits:
        return 0.40 if row.credential == "jwt" else 0.50
    return None


def targets(rows: list[Row], fixed: list[FixedRate]) -> list[str]:
    """The issue's targets, against what this run measured."""
    out = []
    c_agent = reference_row(rows)
    if c_agent is None:
        out.append("agent rows / C example agent: not measured (no --c-agent)")
    else:
        for row in rows:
            target = _ratio_target(row)
            if target is not None:
                ratio = row.requests_per_s / c_agent.requests_per_s
                out.append(f"{row.name} / C example agent with pipelining: {ratio:.2f} "
                           f"(target >= {target:.2f})")
        full = next((row for row in rows if row.kind == "agent" and row.credential == "key"
                     and row.limits and row.workers == 1), None)
        if full is not None and full.agent_cpu_us is not None:
            out.append(f"agent CPU per full-path request: {full.agent_cpu_us:.1f} us "
                       f"(target <= 40), Redis's: {full.redis_cpu_us or 0:.1f} us (target <= 20)")
    half = len(fixed) // 2
    for plain, agent in zip(fixed[:half], fixed[half:], strict=True):
        added = agent.p50_ms - plain.p50_ms
        kept = ("" if agent.kept_up else
                f" (the agent path did not keep up: {agent.achieved_per_s:,.0f} req/s)")
        out.append(f"at {plain.offered_per_s:,.0f} req/s offered: median added by the agent "
                   f"{added:+.2f} ms (target < 1 ms), agent path p99 {agent.p99_ms:.2f} ms "
                   f"(target < 5 ms){kept}")
    return out


def pick_haproxy(choice: str | None) -> str:
    """A path, a version found here ("2.8"), or by default Debian's 2.6."""
    found = haproxy_binaries()
    if choice is None:
        return found.get("2.6") or "/usr/sbin/haproxy"
    return found.get(choice, choice)


def _exit_on_sigterm(signum: int, _frame: object) -> NoReturn:
    sys.exit(128 + signum)  # unwinds through the finally blocks that stop processes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--haproxy", default=None,
                        help="HAProxy binary, or a version found here such as 2.8 "
                             "(default: Debian's 2.6)")
    parser.add_argument("--count", type=int, default=200_000, help="codec frames (200000)")
    parser.add_argument("--c-agent", default=os.environ.get("SPOA_BENCH_C_AGENT"),
                        metavar="COMMAND",
                        help="HAProxy's C example agent (spoa), built outside this repository, "
                             "with any options of its own; '-p PORT' is added, and "
                             "'-c pipelining' for the reference row "
                             "(env SPOA_BENCH_C_AGENT; see bench/README.md)")
    parser.add_argument("--soak", type=int, default=None, metavar="SECONDS",
                        help="only a soak: the full agent path under wrk for SECONDS, "
                             "the agent's memory sampled every 10 s")
    parser.add_argument("--workers", type=int, default=1, help="agent workers in --soak (1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    haproxy = pick_haproxy(args.haproxy)
    c_agent = tuple(shlex.split(args.c_agent)) if args.c_agent else None
    if c_agent and not os.access(c_agent[0], os.X_OK):
        print(f"error: --c-agent {c_agent[0]}: not an executable (see bench/README.md)",
              file=sys.stderr)
        return 2
    if c_agent and "pipelining" in c_agent:
        print("error: --c-agent: leave '-c pipelining' out; the bench runs the agent with it "
              "(the reference row) and without it", file=sys.stderr)
        return 2
    keys = Path(tempfile.mkdtemp(prefix="spoa-bench-"))
    try:
        setup = Setup(haproxy, make_jwt_issuer(keys), c_agent)
        if args.soak is not None:
            return run_soak(args, setup)
        return run_all(args, setup)
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def run_soak(args: argparse.Namespace, setup: Setup) -> int:
    print(f"soak: {args.soak} s of wrk -t{WRK_THREADS} -c{args.connections}, agent RSS "
          f"(with its children) every {SOAK_SAMPLE:.0f} s", flush=True)
    report = soak(args.soak, args.workers, setup, args.connections)
    mib = 1024.0
    print(f"\n{report['plan']}: {report['wrk']['requests_per_s']:,.0f} req/s, "
          f"non-2xx {report['wrk']['non_2xx']}, socket errors {report['wrk']['socket_errors']}")
    print(f"RSS idle before load {report['rss_kib_idle_before_load'] / mib:.1f} MiB; "
          f"start {report['rss_kib_start'] / mib:.1f} MiB, end {report['rss_kib_end'] / mib:.1f} "
          f"MiB, max {report['rss_kib_max'] / mib:.1f} MiB; change {report['change_percent']:+.1f}%"
          f" ({report['change_percent_after_first_sample']:+.1f}% after the first sample)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {RESULTS / 'soak.json'}")
    return 1 if report["wrk"]["non_2xx"] or report["wrk"]["socket_errors"] else 0


def run_all(args: argparse.Namespace, setup: Setup) -> int:
    version = haproxy_version(setup.haproxy)
    cpus = os.cpu_count() or 1
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
    engine = bench_engine(args.count // 4, setup.issuer, RESULTS / "logs" / "engine")
    print("engine decisions/s, in process (check-request handler, Redis answered at once):")
    for name, rate in engine.items():
        print(f"  {name}: {rate:,.0f}/s")

    wrk = " ".join(wrk_argv(f"http://127.0.0.1:PORT{ALLOWED_PATH}", args.duration,
                            args.connections))
    print(f"\nHAProxy {version} ({setup.haproxy}), {cpus} CPUs shared by wrk, HAProxy and the "
          f"agent; load average before the run: {load:.2f}")
    print(f"load per row: {wrk}", flush=True)
    many = max(2, cpus)
    plans = [
        Plan("HAProxy answers itself (ceiling)", kind="ceiling"),
        Plan("HAProxy jwt_verify (RS256) + 3 stick-table limits (native)", kind="native"),
        *(c_agent_plans() if setup.c_agent else []),
        Plan("SPOE + agent, trivial handler (routes only)"),
        Plan("SPOE + agent, cached API key + route, no limits", credential="key"),
        Plan("SPOE + agent, cached key + route + 3 limits, 1 worker", credential="key",
             limits=True),
        Plan(f"SPOE + agent, cached key + route + 3 limits, {many} workers", workers=many,
             credential="key", limits=True),
        Plan("SPOE + agent, JWT (RS256) + route + 3 limits, 1 worker", credential="jwt",
             limits=True),
    ]
    rows = []
    for index, plan in enumerate(plans):
        print(f"  {plan.name} ...", flush=True)
        rows.append(bench_row(plan, setup, RESULTS / "logs" / f"row{index}", args.duration,
                              args.connections))
    ceiling = rows[0].requests_per_s
    native = next(row.requests_per_s for row in rows if row.kind == "native")
    c_row = reference_row(rows)
    for row in rows:
        row.ratio = row.requests_per_s / ceiling if ceiling else 0.0
        row.ratio_to_native = row.requests_per_s / native if native else None
        if c_row is not None and c_row.requests_per_s:
            row.ratio_to_c_agent = row.requests_per_s / c_row.requests_per_s

    base = c_row.requests_per_s if c_row else ISSUE_C_AGENT_RPS
    rates = [base / 2, base / 4]
    full = next(row for row in rows if row.kind == "agent" and row.credential == "key"
                and row.limits and row.workers == 1)
    rates.append(full.requests_per_s / 2)
    print(f"\nfixed rates (open loop, bench/openloop.py, -c{args.connections}): half and a "
          f"quarter of the C example agent's req/s with pipelining "
          f"({'measured' if c_row else 'the issue figure'}: {base:,.0f}), and half the full "
          f"path's own", flush=True)
    fixed, notes = bench_fixed_rates(rates, setup, args.duration, args.connections)

    print()
    print(markdown(rows, c_agent_missing=c_row is None))
    print("\nLatency at a fixed rate (open loop: requests leave on schedule, a request "
          "waiting for a free connection counts that wait):")
    print(fixed_rate_markdown(fixed))
    for note in notes:
        print(f"note: {note}")
    print("\nTargets:")
    goals = targets(rows, fixed)
    for line in goals:
        print(f"- {line}")
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": cpus, "load_average_1m_before": load,
                    "python": platform.python_version(), "haproxy": version,
                    "haproxy_binary": setup.haproxy},
        "codec": {"frames": args.count, "notify_decoded_per_s": decode_rate,
                  "ack_encoded_per_s": encode_rate, "notify_batch": BATCH},
        "keys": {"cached_per_s": cached_rate, "argon2id_per_s": cold_rate},
        "logging": {"filtered_debug_ns": filtered_ns, "json_line_ns": line_ns},
        "route_decision_ns_by_rules": route_ns,
        "engine_decisions_per_s": engine,
        "wrk": wrk,
        "c_agent": " ".join(setup.c_agent) if setup.c_agent else None,
        "rows": [asdict(row) for row in rows],
        "fixed_rate": {"generator": "bench/openloop.py", "connections": args.connections,
                       "duration": args.duration, "notes": notes,
                       "results": [asdict(r) | {"kept_up": r.kept_up} for r in fixed]},
        "targets": goals,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'latest.json'}")

    bad = [row.name for row in rows if row.non_2xx or row.socket_errors]
    bad += [f"{r.path} at {r.offered_per_s:,.0f} req/s" for r in fixed if r.non_2xx]
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
