"""The checks of `spoa-agent doctor`: each looks at one part of a deployment
(the agent, HAProxy, Redis, fail2ban, TLS, the gateway seen from outside)
and says whether it is right and, when not, what to do.

A check never raises and never waits long: `run_probes` runs every probe in
a thread of its own and turns an exception or a probe still running after
CHECK_TIMEOUT into a failed check. `redis_checks` is also used by
`spoa-agent setup`, to warn about a Redis that would lose keys on restart.
"""

from __future__ import annotations

import datetime
import http.client
import itertools
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spoa_agent import native
from spoa_agent.auth.jwks import KeyFetchError, fetch_keys
from spoa_agent.config import Config, ConfigError, load_config
from spoa_agent.install import layout
from spoa_agent.spop import (
    DEFAULT_MAX_FRAME_SIZE,
    AgentDisconnect,
    AgentHello,
    HaproxyHello,
    SpopError,
    decode_frame,
    encode_frame,
)
from spoa_agent.store.redis import redacted, sync_client
from spoa_agent.usage.settings import DEFAULT_LISTEN as DEFAULT_USAGE_LISTEN

# The checks run at once, so this bounds the whole run. Generous: a loaded
# host has been seen taking seconds to start a Python tool (fail2ban-client),
# and a ✗ that only says "slow" sends an operator after the wrong fault.
CHECK_TIMEOUT = 6.0
# Each wait inside a check: below CHECK_TIMEOUT, so that a check that waits
# too long says on what, rather than being cut off by run_probes.
IO_TIMEOUT = 5.0
# haproxy.cfg: `stats socket "${HAPROXY_RUN_DIR}/spoa-gateway.sock"`.
STATS_SOCKET_NAME = "spoa-gateway.sock"
# spoe-agent.conf's `use-backend`, when the files cannot be read to find it.
DEFAULT_AGENT_BACKEND = "spoa-agents"
# fail2ban's action.d/haproxy-spoa.conf, as the shipped jail names it.
FAIL2BAN_ACTION = "haproxy-spoa"
# A certificate closer than this to its end is renewed now, not at 3 am.
CERT_MIN_DAYS = 14
# Ollama's port; the upstream must listen on loopback or a private network only.
DEFAULT_UPSTREAM_PORT = 11434
# Headers lua/spoa_deny.lua puts on allowed answers.
RATELIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "RateLimit-Policy")
# Other spellings of /api/pull a gateway that matches paths naively lets through.
PULL_SPELLINGS = ("/api/pull", "/api//pull", "/API/pull", "/api/pull/", "/api/%70ull",
                  "/./api/pull")
# What HAProxy's `crt DIR` skips: companions of a certificate, not certificates.
_CERT_COMPANIONS = (".key", ".ocsp", ".issuer", ".sctl")
_MAX_BODY = 65536


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist: `fix` says what to do when not `ok`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """Work that yields the checks `names` (in that order)."""

    names: tuple[str, ...]
    run: Callable[[], Check | Sequence[Check]]
    # What to do when it gives no answer in time.
    on_timeout: str = "find what hangs: the host may drop packets or be overloaded"


def failed(names: Sequence[str], detail: str, fix: str) -> list[Check]:
    return [Check(name, False, detail, fix) for name in names]


def run_probes(probes: Sequence[Probe], timeout: float = CHECK_TIMEOUT) -> list[Check]:
    """Every probe at once, each in a daemon thread (so one that hangs is left
    behind and never keeps the process alive); checks in the probes' order."""
    results: list[list[Check] | None] = [None] * len(probes)

    def work(index: int, probe: Probe) -> None:
        try:
            out = probe.run()
            results[index] = [out] if isinstance(out, Check) else list(out)
        except Exception as err:  # a broken check is a failed check, never a crash
            results[index] = failed(probe.names, f"the check itself failed: "
                                    f"{type(err).__name__}: {err}",
                                    "report this as a bug of spoa-agent doctor")

    threads = [threading.Thread(target=work, args=(i, p), daemon=True)
               for i, p in enumerate(probes)]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    checks: list[Check] = []
    for probe, result in zip(probes, results, strict=True):
        checks.extend(result if result is not None else failed(
            probe.names, f"no answer within {timeout:g} s", probe.on_timeout))
    return checks


def _error(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


# --- the deployment on this node ---------------------------------------------


def dropin_setting(text: str, key: str) -> str | None:
    """The last `key=` of a unit or drop-in (single-valued settings)."""
    value = None
    for line in text.splitlines():
        name, sep, rest = line.strip().partition("=")
        if sep and name.strip() == key:
            value = rest.strip()
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of a systemd EnvironmentFile (the agent's secrets);
    nothing when it is absent or unreadable (systemd's `EnvironmentFile=-`)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if sep:
            found[name.strip()] = value
    return found


@dataclass(frozen=True)
class Node:
    """Where this node's parts are, as the drop-in and the flags say."""

    config_path: Path
    dropin_path: Path
    dropin_text: str | None  # None: unreadable
    dropin_error: str
    haproxy_config: Path
    workdir: Path
    haproxy_env: dict[str, str]
    extra_configs: tuple[str, ...]  # the drop-in's EXTRAOPTS -f FILE|DIR
    stats_socket: Path
    banlist: str
    cert_dir: str | None
    agent_addr: str | None  # the drop-in's AGENT_ADDR: where HAProxy finds the agent
    env: dict[str, str] = field(default_factory=dict)  # the agent's env file, then ours


def resolve_node(config_path: Path, dropin_path: Path, haproxy_config: Path | None,
                 stats_socket: Path | None, banlist: str | None,
                 agent_env: Path) -> Node:
    """Flags win, then the drop-in, then the installed layout."""
    text: str | None
    try:
        text, error = dropin_path.read_text(), ""
        env = layout.dropin_environment(text)
        words = shlex.split(env.get("EXTRAOPTS", ""))
    except (OSError, ValueError) as err:  # ValueError: unbalanced quotes
        text, error, env, words = None, _error(err), {}, []
    cfg = haproxy_config or Path(env.get("CONFIG") or layout.GATEWAY_CFG)
    workdir = dropin_setting(text or "", "WorkingDirectory")
    extra: list[str] = []
    for flag, value in itertools.pairwise(words):
        if flag == "-f":
            extra.append(value)
    run_dir = env.get("HAPROXY_RUN_DIR")
    return Node(
        config_path=config_path, dropin_path=dropin_path, dropin_text=text,
        dropin_error=error, haproxy_config=cfg,
        # haproxy.cfg names its other files relative to the directory above its
        # own; systemd's "-" prefix only says a missing directory is no error.
        workdir=Path(workdir.lstrip("-")) if workdir else cfg.parent.parent,
        haproxy_env=env, extra_configs=tuple(extra),
        stats_socket=stats_socket or (Path(run_dir) / STATS_SOCKET_NAME if run_dir
                                      else layout.HAPROXY_SOCKET),
        banlist=banlist or env.get("HAPROXY_BANLIST") or str(layout.BANLIST),
        cert_dir=env.get("TLS_CERT_DIR") or None,
        agent_addr=env.get("AGENT_ADDR") or None,
        env={**read_env_file(agent_env), **os.environ},
    )


def config_check(node: Node) -> tuple[Check, Config | None]:
    try:
        config = load_config(node.config_path, env=node.env)
    except ConfigError as err:
        return Check("config", False, str(err).replace("\n", "; "),
                     f"spoa-agent config validate {node.config_path} lists every problem"), None
    except Exception as err:  # the loader should say ConfigError; anything else is a check failure
        return Check("config", False, f"{node.config_path}: {type(err).__name__}: {err}",
                     f"spoa-agent config validate {node.config_path}"), None
    routes = "deny_all" if config.deny_all else f"{len(config.routes)} routes"
    return Check("config", True, f"{node.config_path}: {routes}"), config


def split_addr(addr: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT; an address that means every interface is probed
    on loopback."""
    host, _, port = addr.strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def agent_check(addr: str) -> Check:
    """An SPOP health check as HAProxy's `option spop-check` sends it."""
    try:
        host, port = split_addr(addr)
    except ValueError:
        return Check("agent", False, f"{addr!r} is not HOST:PORT",
                     "fix AGENT_ADDR in the drop-in (or [server] listen in agent.toml)")
    hello = HaproxyHello(("2.0",), 16380, frozenset(), healthcheck=True)
    fix = ("systemctl restart spoa-agent, and `journalctl -u spoa-agent -n 50` says why it "
           "stopped; its listen address must be the drop-in's AGENT_ADDR")
    not_spop = Check("agent", False, f"{addr}: the answer is not SPOP",
                     "is another program on this port? `ss -ltnp` names it")
    try:
        with socket.create_connection((host, port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(encode_frame(hello))
            try:
                size = int.from_bytes(_recv_exact(sock, 4), "big")
            except TimeoutError:
                return Check("agent", False, f"{addr}: accepts connections but sent no "
                             f"AGENT-HELLO within {IO_TIMEOUT:g} s", not_spop.fix)
            if size > DEFAULT_MAX_FRAME_SIZE:  # e.g. "HTTP" read as a length
                return not_spop
            frame = decode_frame(_recv_exact(sock, size))
    except SpopError:
        return not_spop
    except OSError as err:
        return Check("agent", False, f"{addr}: {_error(err)}", fix)
    if type(frame) is AgentHello:
        return Check("agent", True, f"{addr}: AGENT-HELLO, SPOP {frame.version}")
    if type(frame) is AgentDisconnect:
        return Check("agent", False, f"{addr}: AGENT-DISCONNECT {frame.status} "
                                     f"{frame.message}", fix)
    return not_spop


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed the connection without an answer")
        data += chunk
    return data


def agent_backend(node: Node) -> str:
    """The backend HAProxy's SPOE sends to: haproxy.cfg's `filter spoe ...
    config FILE`, then that file's `use-backend`."""
    try:
        cfg = node.haproxy_config.read_text()
        spoe = re.search(r"^\s*filter\s+spoe\b.*\bconfig\s+(\S+)", cfg, re.M)
        if spoe is None:
            return DEFAULT_AGENT_BACKEND
        spoe_path = Path(spoe.group(1).strip('"'))
        text = (spoe_path if spoe_path.is_absolute() else node.workdir / spoe_path).read_text()
    except OSError:
        return DEFAULT_AGENT_BACKEND
    found = re.search(r"^\s*use-backend\s+(\S+)", text, re.M)
    return found.group(1) if found else DEFAULT_AGENT_BACKEND


def haproxy_socket_command(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):  # one command: HAProxy closes after answering
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def haproxy_backend_check(node: Node) -> Check:
    backend = agent_backend(node)
    try:
        stats = haproxy_socket_command(node.stats_socket, "show stat")
    except OSError as err:
        fix = ("run doctor as root (the socket is mode 600)" if isinstance(err, PermissionError)
               else "systemctl status haproxy; the drop-in's HAPROXY_RUN_DIR names the socket")
        return Check("haproxy-backend", False, f"{node.stats_socket}: {_error(err)}", fix)
    lines = stats.splitlines()
    if not lines or not lines[0].startswith("# "):
        return Check("haproxy-backend", False, f"{node.stats_socket}: unexpected answer "
                     f"{stats[:80]!r}", "is this HAProxy's stats socket (level admin)?")
    columns = lines[0][2:].split(",")
    servers = []
    for line in lines[1:]:
        row = dict(zip(columns, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
            servers.append(f"{row.get('svname')} {row.get('status')}")
    if not servers:
        return Check("haproxy-backend", False, f"backend {backend}: not in the running "
                     "HAProxy", "systemctl reload haproxy, so that it runs the gateway's config")
    down = [s for s in servers if not s.split(" ", 1)[1].startswith("UP")]
    detail = f"backend {backend}: " + ", ".join(servers)
    if down:
        return Check("haproxy-backend", False, detail,
                     "HAProxy cannot reach the agent: check the agent, and that AGENT_ADDR "
                     "is where it listens")
    return Check("haproxy-backend", True, detail)


def haproxy_config_check(node: Node, binary: str) -> Check:
    if node.dropin_text is None:
        return Check("haproxy-config", False, f"{node.dropin_path}: {node.dropin_error}",
                     "spoa-agent setup installs the drop-in (or give --haproxy-dropin)")
    argv = [binary, "-c", "-f", str(node.haproxy_config)]
    for extra in node.extra_configs:
        argv += ["-f", extra]
    # systemd gives HAProxy the drop-in's variables and little else.
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **node.haproxy_env}
    try:
        result = subprocess.run(argv, cwd=node.workdir, env=env, capture_output=True,
                                text=True, timeout=IO_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("haproxy-config", False, f"{binary}: {_error(err)}",
                     "apt install haproxy, or give --haproxy BINARY")
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return Check("haproxy-config", True, f"{node.haproxy_config}: valid")
    alerts = [line for line in output.splitlines() if "ALERT" in line] or output.splitlines()
    return Check("haproxy-config", False, "; ".join(alerts[-3:]) or f"exit {result.returncode}",
                 f"cd {node.workdir} && {binary} -c -f {node.haproxy_config} shows every error")


# --- Redis -------------------------------------------------------------------

REDIS_NAMES = ("redis", "redis-persistence", "redis-eviction", "redis-clock")


def _config_get(client: Any, name: str) -> str | None:
    """CONFIG GET name; None when CONFIG is disabled or renamed (managed Redis)."""
    import redis

    try:
        answer = client.config_get(name)
    except redis.ResponseError:
        return None
    value = answer.get(name) if isinstance(answer, dict) else None
    return None if value is None else str(value)


def redis_checks(url: str, password: str | None) -> list[Check]:
    """Redis reachable, persistent, not evicting keys, and on time. Each
    command waits at most IO_TIMEOUT (setup calls this without doctor's
    threads)."""
    import redis

    shown = redacted(url)
    try:
        client = sync_client(url, timeout=IO_TIMEOUT, password=password)
    except ValueError as err:
        return failed(REDIS_NAMES, str(err), "fix [redis] url in agent.toml (or "
                      "SPOA_AGENT_REDIS_URL in /etc/spoa-agent/env)")
    try:
        try:
            client.ping()
            version = client.info("server").get("redis_version", "?")
        except redis.AuthenticationError as err:
            return failed(REDIS_NAMES, f"{shown}: {err}",
                          "set SPOA_AGENT_REDIS_PASSWORD in /etc/spoa-agent/env to "
                          "Redis's requirepass")
        except (redis.RedisError, OSError) as err:
            return [Check("redis", False, f"{shown}: {_error(err)}",
                          f"start Redis, or fix [redis] url: redis-cli -u {shown} ping"),
                    *failed(REDIS_NAMES[1:], "not checked: Redis is unreachable",
                            "fix the redis check first")]
        return [Check("redis", True, f"{shown}: Redis {version}"),
                *(_asking(name, check, client) for name, check in (
                    ("redis-persistence", _persistence), ("redis-eviction", _eviction),
                    ("redis-clock", _clock)))]
    finally:
        client.close()


def _asking(name: str, check: Callable[[Any], Check], client: Any) -> Check:
    """`check`, or the error Redis answered it with (an ACL that forbids INFO
    or TIME, a connection lost halfway)."""
    import redis

    try:
        return check(client)
    except (redis.RedisError, OSError) as err:
        return Check(name, False, f"Redis answered: {_error(err)}",
                     "let the agent's Redis user run INFO, CONFIG GET and TIME, or check "
                     "this by hand with redis-cli")


def _persistence(client: Any) -> Check:
    lost = "keys and rate limits would be lost when Redis restarts"
    fix = "redis-cli CONFIG SET appendonly yes, then CONFIG REWRITE to keep it"
    save, appendonly = _config_get(client, "save"), _config_get(client, "appendonly")
    if save is None or appendonly is None:  # CONFIG disabled: what INFO can tell
        info = client.info("persistence")
        if int(info.get("aof_enabled", 0)):
            return Check("redis-persistence", True, "AOF on (INFO persistence)")
        if int(info.get("rdb_saves", 0)):
            return Check("redis-persistence", True, "RDB snapshots taken (INFO persistence)")
        return Check("redis-persistence", False, f"CONFIG is disabled and INFO shows no AOF "
                     f"and no snapshot since Redis started: {lost}",
                     "turn on appendonly (or save) in the Redis host's own configuration")
    kinds = []
    if save.strip():
        kinds.append(f"RDB snapshots (save {save})")
    if appendonly == "yes":
        kinds.append("AOF")
    if not kinds:
        return Check("redis-persistence", False, f"neither RDB snapshots nor AOF: {lost}", fix)
    return Check("redis-persistence", True, " and ".join(kinds))


def _eviction(client: Any) -> Check:
    policy = _config_get(client, "maxmemory-policy")
    if policy is None:
        policy = str(client.info("memory").get("maxmemory_policy", "?"))
    if policy.startswith("allkeys-"):
        return Check("redis-eviction", False, f"maxmemory-policy {policy}: when full, Redis "
                     "deletes API keys and rate-limit state",
                     "redis-cli CONFIG SET maxmemory-policy noeviction")
    return Check("redis-eviction", True, f"maxmemory-policy {policy}")


def _clock(client: Any) -> Check:
    before = time.time()
    seconds, micros = client.time()
    local = (before + time.time()) / 2
    skew = seconds + micros / 1e6 - local
    detail = f"Redis clock {abs(skew):.3f} s {'ahead of' if skew > 0 else 'behind'} this node"
    if abs(skew) >= 1.0:
        # Rate limits run on Redis's clock, JWT expiry on this node's.
        return Check("redis-clock", False, detail,
                     "timedatectl set-ntp true, here and on the Redis host")
    return Check("redis-clock", True, detail)


# --- fail2ban ----------------------------------------------------------------


def fail2ban_client(binary: str, sock: str | None, *args: str) -> tuple[int, str]:
    argv = [binary, *(["-s", sock] if sock else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IO_TIMEOUT)
    return result.returncode, (result.stdout + result.stderr).strip()


def _client_message(out: str, code: int) -> str:
    """fail2ban-client's last line without its log prefix (date, pid, level)."""
    last = out.splitlines()[-1] if out else f"exit {code}"
    return re.sub(r"^\d{4}-\d\d-\d\d .*?(ERROR|NOK)\s*", "", last)


def _not_running_fix(out: str) -> str | None:
    return "systemctl start fail2ban" if "socket" in out.lower() else None


def _client_failure(name: str, err: Exception) -> Check:
    if isinstance(err, FileNotFoundError):
        return Check(name, False, "fail2ban-client is not installed", "apt install fail2ban")
    return Check(name, False, _error(err), "systemctl status fail2ban")


def fail2ban_jail_check(binary: str, sock: str | None) -> Check:
    jail = layout.FAIL2BAN_JAIL
    try:
        code, out = fail2ban_client(binary, sock, "status", jail)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _client_failure("fail2ban", err)
    if code != 0:
        fix = _not_running_fix(out) or (f"install the {jail} jail, filter and action "
                                         "(spoa-agent setup), then fail2ban-client reload")
        return Check("fail2ban", False, _client_message(out, code), fix)
    banned = re.search(r"Currently banned:\s*(\d+)", out)
    return Check("fail2ban", True, f"jail {jail} loaded, "
                 f"{banned.group(1) if banned else '?'} address(es) banned")


def fail2ban_banlist_check(binary: str, sock: str | None, haproxy_banlist: str) -> Check:
    try:
        code, out = fail2ban_client(binary, sock, "get", layout.FAIL2BAN_JAIL, "action",
                                    FAIL2BAN_ACTION, "banlist")
    except (OSError, subprocess.TimeoutExpired) as err:
        return _client_failure("fail2ban-banlist", err)
    jail_file = layout.FAIL2BAN_DIR / "jail.d" / f"{layout.FAIL2BAN_JAIL}.local"
    if code != 0:
        fix = _not_running_fix(out) or (f"the jail's action line must be {FAIL2BAN_ACTION}"
                                         f"[banlist=..., socket=...] ({jail_file})")
        return Check("fail2ban-banlist", False, f"the jail's {FAIL2BAN_ACTION} action: "
                     + _client_message(out, code), fix)
    banlist = out.splitlines()[-1].strip() if out else ""
    # The runtime API knows the ACL by the exact path haproxy.cfg gave it.
    if banlist != haproxy_banlist:
        return Check("fail2ban-banlist", False, f"fail2ban bans into {banlist}, HAProxy "
                     f"reads {haproxy_banlist}: bans never reach HAProxy",
                     f"set banlist={haproxy_banlist} in {jail_file}, then "
                     "fail2ban-client reload")
    return Check("fail2ban-banlist", True, f"fail2ban and HAProxy share {banlist}")


# --- TLS ---------------------------------------------------------------------


def client_ca_problem(path: str, now: datetime.datetime) -> tuple[str | None, str]:
    """TLS_CLIENT_CA (device certificates): what is wrong with it, or what it is."""
    from cryptography import x509

    try:
        cas = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        return f"TLS_CLIENT_CA {path}: not a PEM certificate ({_error(err)})", ""
    names = []
    for cert in cas:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        name = cert.subject.rfc4514_string()
        if not is_ca:
            return (f"TLS_CLIENT_CA {path}: {name} is no CA certificate (a device's own "
                    "goes to `spoa-agent device add`)"), ""
        days = (cert.not_valid_after_utc - now).days
        if days <= CERT_MIN_DAYS:
            return f"TLS_CLIENT_CA {path}: {name} expires in {days} days", ""
        names.append(f"{name}: {days} days left")
    return None, "device certificates signed by " + ", ".join(names)


def tls_check(cert_dir: str | None, now: datetime.datetime | None = None,
              client_ca: str | None = None) -> Check:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not cert_dir:
        return Check("tls", False, "TLS_CERT_DIR is unset: API keys cross the network in clear",
                     "put a PEM (certificate, chain, key) in "
                     f"{layout.GATEWAY_CERTS} and set TLS_CERT_DIR in the drop-in")
    now = now or datetime.datetime.now(datetime.UTC)
    directory = Path(cert_dir)
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file()
                       and not p.name.startswith(".") and not p.name.endswith(_CERT_COMPANIONS))
    except OSError as err:
        return Check("tls", False, f"{cert_dir}: {_error(err)}",
                     "create it with a PEM in it, or fix TLS_CERT_DIR in the drop-in")
    if not files:
        return Check("tls", False, f"{cert_dir}: no certificate", f"put a PEM in {cert_dir}")
    seen, bad = [], []
    for path in files:
        try:
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError) as err:
            bad.append(f"{path.name}: not a PEM certificate ({_error(err)})")
            continue
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else path.name
        days = (cert.not_valid_after_utc - now).days
        seen.append(f"{common_name}: {days} days left")
        if days <= CERT_MIN_DAYS:
            bad.append(f"{common_name} ({path.name}) expires in {days} days")
    if bad:
        return Check("tls", False, "; ".join(bad + seen),
                     "renew it (certbot renew; cat fullchain.pem privkey.pem > the PEM), "
                     "then systemctl reload haproxy")
    if client_ca:
        problem, about = client_ca_problem(client_ca, now)
        if problem is not None:
            return Check("tls", False, problem, "put the CA that signs your devices' "
                         "certificates there (PEM), or comment TLS_CLIENT_CA out in the drop-in "
                         "(docs/api-keys.md#device-certificates)")
        seen.append(about)
    return Check("tls", True, "; ".join(seen))


# --- from outside: the gateway as clients see it -----------------------------


@dataclass(frozen=True)
class GatewayUrl:
    url: str
    cafile: str | None = None

    def request(self, method: str, path: str,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request, the path sent as given (no normalising) and no redirect
        followed: what the gateway itself answers."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=self.cafile)
            conn = http.client.HTTPSConnection(host, parts.port, timeout=IO_TIMEOUT,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=IO_TIMEOUT)
        try:
            # An empty body: should the gateway let a pull through, Ollama
            # refuses it for want of a model name instead of pulling one.
            conn.request(method, parts.path.rstrip("/") + path,
                         body=b"" if method == "POST" else None, headers=dict(headers or {}))
            answer = conn.getresponse()
            return (answer.status, {k.lower(): v for k, v in answer.getheaders()},
                    answer.read(_MAX_BODY))
        finally:
            conn.close()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and all(isinstance(error.get(k), str)
                                           for k in ("message", "type", "code"))


def _ollama_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _anthropic_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (isinstance(body, dict) and body.get("type") == "error" and isinstance(error, dict)
            and isinstance(error.get("type"), str) and isinstance(error.get("message"), str))


_DIALECTS: tuple[tuple[str, str, str, Callable[[Any], bool]], ...] = (
    ("GET", "/v1/models", "OpenAI", _openai_error),
    ("GET", "/api/tags", "Ollama", _ollama_error),
    ("POST", "/v1/messages", "Anthropic", _anthropic_error),
)


def _redirect_hint(status: int, headers: Mapping[str, str]) -> str:
    if 300 <= status < 400 and headers.get("location", "").startswith("https:"):
        return " (the gateway redirects to HTTPS: give --url https://...)"
    return ""


# The gateway answers 503 when it has no decision (fail closed): nothing
# about the policy can be learned from it.
_UNDECIDED = ("the gateway could not decide ({answers}): HAProxy answers 503 when the agent "
              "is down or too slow")
_UNDECIDED_FIX = "fix the agent and haproxy-backend checks first"
# HAProxy holds a request for the agent's decision up to SPOE's `timeout processing`.
GATEWAY_SLOW_FIX = ("the gateway kept the request waiting: check the agent and "
                    "haproxy-backend checks, and that --url reaches this gateway")


def no_key_check(gateway: GatewayUrl) -> Check:
    seen, wrong, undecided = [], [], False
    for method, path, dialect, is_dialect in _DIALECTS:
        status, headers, body = gateway.request(method, path)
        seen.append(f"{method} {path} {status}")
        if status >= 500:
            undecided = True
            wrong.append(_UNDECIDED.format(answers=seen[-1]))
        elif status != 401:
            wrong.append(f"{method} {path} without a key: {status}, not 401"
                         + _redirect_hint(status, headers))
        elif not is_dialect(_json(body)):
            wrong.append(f"{method} {path}: 401 without {dialect}'s JSON error body")
    if wrong:
        return Check("no-key", False, "; ".join(wrong), _UNDECIDED_FIX if undecided else
                     "requests must go through the agent: haproxy.cfg's `filter spoe` and "
                     "`[auth] required = true` in agent.toml")
    return Check("no-key", True, ", ".join(seen) + " in each API's error format")


def blocked_check(gateway: GatewayUrl, key: str | None) -> Check:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answers = {path: gateway.request("POST", path, headers)[0] for path in PULL_SPELLINGS}
    passed = {403, 401} if key is None else {403}
    undecided = [f"{path} {status}" for path, status in answers.items() if status >= 500]
    if undecided:
        return Check("blocked", False, _UNDECIDED.format(answers=", ".join(undecided)),
                     _UNDECIDED_FIX)
    through = [f"{path} {status}" for path, status in answers.items() if status not in passed]
    if through:
        return Check("blocked", False, "model pulls not refused: " + ", ".join(through),
                     "remove the routes that allow /api/pull from agent.toml (presets "
                     "ollama-safe, openai, anthropic never do)")
    if key is None:
        return Check("blocked", True, "POST /api/pull and its other spellings refused "
                     "without a key; the policy was not checked: give a key "
                     "(--key-stdin or SPOA_AGENT_DOCTOR_KEY)")
    return Check("blocked", True, f"POST /api/pull refused with a key (403), in all "
                 f"{len(PULL_SPELLINGS)} spellings")


def key_check(gateway: GatewayUrl, key: str | None) -> Check:
    if key is None:
        return Check("key", True, "not checked: give a key (--key-stdin or "
                     "SPOA_AGENT_DOCTOR_KEY)")
    headers = {"Authorization": f"Bearer {key}"}
    tried = []
    for path in ("/api/tags", "/v1/models"):
        status, answer_headers, _ = gateway.request("GET", path, headers)
        tried.append(f"GET {path} {status}")
        if status >= 500:
            return Check("key", False, _UNDECIDED.format(answers=tried[-1]), _UNDECIDED_FIX)
        if status == 200:
            missing = [h for h in RATELIMIT_HEADERS if h.lower() not in answer_headers]
            figures = ", ".join(f"{h} {answer_headers[h.lower()]}" for h in RATELIMIT_HEADERS
                                if h.lower() in answer_headers)
            if missing:
                return Check("key", False, f"GET {path} 200 without {', '.join(missing)}",
                             "set [ratelimit] per_key in agent.toml, and keep haproxy.cfg's "
                             "`http-response lua.spoa-ratelimit-headers`")
            return Check("key", True, f"GET {path} 200, {figures}")
    return Check("key", False, "with the key: " + ", ".join(tried),
                 "spoa-agent token show ID: is the key valid, and may it use /api/tags "
                 "or /v1/models?")


def upstream_exposed_check(url: str, port: int) -> Check:
    host = urlsplit(url).hostname or ""
    try:
        with socket.create_connection((host, port), timeout=IO_TIMEOUT):
            pass
    except TimeoutError:
        return Check("upstream-exposed", True, f"{host}:{port}: no answer (filtered)")
    except OSError as err:
        return Check("upstream-exposed", True, f"{host}:{port}: {_error(err)}")
    return Check("upstream-exposed", False, f"{host}:{port} accepts connections: clients "
                 "can reach the AI backend without the gateway",
                 "Ollama listens on a public address: bind it to 127.0.0.1 "
                 "(OLLAMA_HOST=127.0.0.1:11434)")


# --- the checklist -----------------------------------------------------------

def usage_check(addr: str | None) -> Check:
    """The agent's usage port, where HAProxy's Lua sends what each answer used."""
    if addr is None:
        return Check("usage", True, "usage counting is off ([usage] listen)")
    try:
        host, port = split_addr(addr)
        with socket.create_connection((host, port), timeout=IO_TIMEOUT):
            pass
    except (OSError, ValueError) as err:
        return Check("usage", False, f"{addr}: {_error(err)}",
                     "the agent takes usage records there ([usage] listen, HAProxy's "
                     "USAGE_ADDR); until it does, HAProxy holds them in memory")
    return Check("usage", True, f"{addr}: the agent takes usage records")


NODE_CHECKS = ("config", "agent", "usage", "haproxy-backend", "haproxy-config", *REDIS_NAMES,
               "fail2ban", "fail2ban-banlist", "tls", "identity-providers", "compiled")
URL_CHECKS = ("no-key", "blocked", "key", "upstream-exposed")
ALL_CHECKS = NODE_CHECKS + URL_CHECKS


def node_probes(node: Node, config: Config | None, haproxy: str, fail2ban: str,
                fail2ban_socket: str | None, redis_url: str | None) -> list[Probe]:
    """The checks of this node past `config` (whose result is already known).
    HAProxy reaches the agent at the drop-in's AGENT_ADDR: that is where the
    agent must answer, whatever agent.toml says."""
    agent_addr = node.agent_addr or (str(config.server.listen) if config else None)
    usage_listen = config.usage.listen if config else DEFAULT_USAGE_LISTEN
    usage_addr = node.haproxy_env.get("USAGE_ADDR") or (str(usage_listen) if usage_listen
                                                        else None)
    probes = [
        Probe(("agent",), lambda: agent_check(agent_addr) if agent_addr else Check(
            "agent", False, "no address: the drop-in has no AGENT_ADDR and the config "
            "did not load", "fix the config check first")),
        Probe(("usage",), lambda: usage_check(usage_addr)),
        Probe(("haproxy-backend",), lambda: haproxy_backend_check(node)),
        Probe(("haproxy-config",), lambda: haproxy_config_check(node, haproxy)),
    ]
    url = redis_url or (config.redis.url if config else None)
    password = config.redis.password if config else node.env.get("SPOA_AGENT_REDIS_PASSWORD")
    probes.append(Probe(REDIS_NAMES, lambda: redis_checks(url, password) if url else failed(
        REDIS_NAMES, "no Redis URL: the config did not load", "fix the config check first")))
    probes += [
        Probe(("fail2ban",), lambda: fail2ban_jail_check(fail2ban, fail2ban_socket)),
        Probe(("fail2ban-banlist",),
              lambda: fail2ban_banlist_check(fail2ban, fail2ban_socket, node.banlist)),
        Probe(("tls",), lambda: tls_check(node.cert_dir,
                                          client_ca=node.haproxy_env.get("TLS_CLIENT_CA"))),
        Probe(("identity-providers",), lambda: identity_providers_check(config)),
        Probe(("compiled",), compiled_check),
    ]
    return probes


def compiled_check() -> Check:
    """The per-request path runs compiled (setup.py), as this install's agent
    will: pure Python answers the same, with more CPU per request."""
    pure, stale = native.pure_modules(), native.stale_modules()
    if stale:
        return Check("compiled", False, f"compiled modules older than their source: "
                     f"{', '.join(stale)}", "build again: pip install -e . (make deps)")
    if pure:
        return Check("compiled", False, f"{len(pure)} of {len(native.HOT_PATH)} modules of "
                     "the per-request path run as pure Python: the agent answers the same, "
                     "with about twice the CPU per request",
                     "install a C compiler and Python's headers (apt install gcc python3-dev), "
                     "then reinstall spoa-agent")
    return Check("compiled", True, f"the per-request path is compiled "
                 f"({len(native.HOT_PATH)} modules, mypyc)")


def identity_providers_check(config: Config | None) -> Check:
    """The OpenID provider ([oidc]) and the JWT issuers whose keys come from a
    URL: each answers with its signing keys, as the agent will ask."""
    if config is None:
        return Check("identity-providers", False, "the config did not load",
                     "fix the config check first")
    wanted = [(issuer.issuer, issuer.jwks_url, issuer.jwks_timeout)
              for issuer in config.auth.issuers if issuer.jwks_url or issuer.discovery]
    if config.oidc is not None:
        wanted.append((config.oidc.issuer, None, config.oidc.timeout))
    if not wanted:
        return Check("identity-providers", True, "none configured (no [oidc], no jwks_url)")
    found, problems = [], []
    for issuer, url, timeout in wanted:
        try:
            keys = fetch_keys(url, issuer, min(timeout, CHECK_TIMEOUT - 1))
        except KeyFetchError as err:
            problems.append(str(err))
        else:
            found.append(f"{issuer}: {len(keys)} key(s)")
    if problems:
        return Check("identity-providers", False, "; ".join(problems),
                     "the agent keeps the keys it last fetched, but cannot check a token or "
                     "a sign-in signed with a key it never saw (503 jwks_unavailable): make "
                     "the provider reachable from this host, or fix its URL "
                     "(docs/api-keys.md#jwts, docs/oidc.md)")
    return Check("identity-providers", True, "; ".join(found))


def _reaching(name: str, gateway: GatewayUrl, check: Callable[[], Check]) -> Callable[[], Check]:
    """`check`, or what kept it from reaching the gateway."""
    def run() -> Check:
        try:
            return check()
        except ssl.SSLCertVerificationError as err:
            return Check(name, False, f"{gateway.url}: {err.verify_message}",
                         "serve the whole chain (fullchain.pem), or give --cacert CA for a "
                         "private CA")
        except TimeoutError:
            return Check(name, False, f"{gateway.url}: no answer within {IO_TIMEOUT:g} s",
                         GATEWAY_SLOW_FIX)
        except (OSError, http.client.HTTPException) as err:
            return Check(name, False, f"{gateway.url}: {_error(err)}",
                         f"is HAProxy up and --url right? curl -v {gateway.url}")
    return run


def url_probes(gateway: GatewayUrl, key: str | None, upstream_port: int) -> list[Probe]:
    return [
        Probe(("no-key",), _reaching("no-key", gateway, lambda: no_key_check(gateway)),
              GATEWAY_SLOW_FIX),
        Probe(("blocked",), _reaching("blocked", gateway, lambda: blocked_check(gateway, key)),
              GATEWAY_SLOW_FIX),
        Probe(("key",), _reaching("key", gateway, lambda: key_check(gateway, key)),
              GATEWAY_SLOW_FIX),
        Probe(("upstream-exposed",), lambda: upstream_exposed_check(gateway.url, upstream_port)),
    ]
