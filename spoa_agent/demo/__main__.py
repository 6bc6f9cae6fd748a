"""`make demo`: the whole gateway on this machine, in the foreground.

Starts the small Ollama-like upstream, the agent with the example policy and
HAProxy with the shipped haproxy.cfg; shows an allowed and a blocked call,
prints curl lines to try, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import time

from spoa_agent.demo.stack import REPO, Gateway, free_port, haproxy_binaries

CONFIG = REPO / "config" / "agent.example.toml"
WORKDIR = REPO / ".demo"


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _call(port: int, method: str, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b'{"model":"llama3.2:1b"}' if method == "POST" else None)
        resp = conn.getresponse()
        return f"{resp.status} {resp.read().decode()[:100]}"
    finally:
        conn.close()


def main() -> int:
    binaries = haproxy_binaries()
    if not binaries:
        print("demo: no haproxy binary found; run `make demo` (it installs one)", file=sys.stderr)
        return 1
    version, haproxy = min(binaries.items())
    WORKDIR.mkdir(exist_ok=True)
    gw = Gateway(WORKDIR, gateway_port=_port_or_free(8080), agent_port=_port_or_free(12345),
                 upstream_port=_port_or_free(11435))
    stop = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        gw.start_upstream()
        gw.start_agent(CONFIG)
        gw.start_haproxy(haproxy)
        url = gw.url
        print(f"""
spoa-agent demo: HAProxy {version} -> agent -> a small Ollama-like upstream
  gateway   {url}
  agent     127.0.0.1:{gw.agent_port} (policy: {CONFIG.relative_to(REPO)})
  logs      {WORKDIR.relative_to(REPO)}/agent.log (JSON lines), haproxy.log, upstream.log

What the gateway answers right now:
  GET  /api/tags  -> {_call(gw.gateway_port, "GET", "/api/tags")}
  POST /api/pull  -> {_call(gw.gateway_port, "POST", "/api/pull")}

Try it yourself:
  curl -i {url}/api/tags                                   # allowed: 200 from the upstream
  curl -i {url}/v1/chat/completions -d '{{"model":"llama3.2:1b","messages":[]}}'
  curl -i -X POST {url}/api/pull -d '{{"model":"llama3"}}'  # blocked: 403, logged by the agent
  curl -i -X DELETE {url}/api/delete                       # blocked: not on the allowlist
  .venv/bin/spoa-agent --config {CONFIG.relative_to(REPO)} check --method POST --path /api/pull

API keys (401 without one) and rate limits (429) arrive with the token and
rate-limit work; until then every allowed endpoint is open to anyone who can
reach {url}.

Ctrl-C stops everything.""", flush=True)
        while not stop:
            for name, proc in gw.processes.items():
                if proc.popen.poll() is not None:
                    print(f"demo: {name} exited ({proc.popen.returncode}); see {proc.log_path}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        gw.stop()
        print("\ndemo: stopped agent, HAProxy and upstream.")


if __name__ == "__main__":
    sys.exit(main())
