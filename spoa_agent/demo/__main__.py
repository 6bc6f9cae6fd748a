"""`make demo`: the whole gateway on this machine, in the foreground.

Starts Redis, the small Ollama-like upstream, the agent with the example
policy and HAProxy with the shipped haproxy.cfg; creates a demo API key,
shows an allowed call, a 401 and a 403, prints curl lines to try, and stops
everything on Ctrl-C.
"""

from __future__ import annotations

import http.client
import json
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


def _call(port: int, method: str, path: str, key: str | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        conn.request(method, path, body=b'{"model":"llama3.2:1b"}' if method == "POST" else None,
                     headers=headers)
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
        gw.start_redis()
        gw.start_upstream()
        gw.start_agent(CONFIG)
        gw.start_haproxy(haproxy)
        created = gw.spoa_agent("token", "create", "--name", "demo", "--format", "json")
        if created.returncode != 0:
            print(f"demo: could not create a key: {created.stderr}", file=sys.stderr)
            return 1
        key = json.loads(created.stdout)["token"]
        url, port = gw.url, gw.gateway_port
        cli = f"SPOA_AGENT_REDIS_URL={gw.redis_url} .venv/bin/spoa-agent"
        print(f"""
spoa-agent demo: HAProxy {version} -> agent (Redis) -> a small Ollama-like upstream
  gateway   {url}
  agent     127.0.0.1:{gw.agent_port} (policy: {CONFIG.relative_to(REPO)})
  redis     {gw.redis_url} (throwaway, nothing saved)
  logs      {WORKDIR.relative_to(REPO)}/agent.log (JSON lines), haproxy.log, upstream.log

A demo API key was created (shown once; Redis keeps only its argon2id hash):
  KEY={key}

What the gateway answers right now:
  GET  /api/tags with the key     -> {_call(port, "GET", "/api/tags", key)}
  GET  /api/tags without a key    -> {_call(port, "GET", "/api/tags")}
  POST /api/pull with the key     -> {_call(port, "POST", "/api/pull", key)}

Try it yourself (paste the KEY= line first):
  curl -i {url}/api/tags -H "Authorization: Bearer $KEY"          # 200 from the upstream
  curl -i {url}/v1/chat/completions -H "Authorization: Bearer $KEY" \\
       -d '{{"model":"llama3.2:1b","messages":[]}}'
  curl -i {url}/api/tags -H "x-api-key: $KEY"                     # the Anthropic SDK's header
  curl -i {url}/api/tags                                          # 401: no key
  curl -i -X POST {url}/api/pull -H "Authorization: Bearer $KEY"  # 403: blocked endpoint
  {cli} token list
  {cli} token revoke <id>   # the key gets 401 within a second
  {cli} --config {CONFIG.relative_to(REPO)} check --method POST --path /api/pull

Rate limits (429) arrive with the rate-limit work.
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
        print("\ndemo: stopped HAProxy, agent, upstream and Redis.")


if __name__ == "__main__":
    sys.exit(main())
