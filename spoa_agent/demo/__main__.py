"""`make demo`: the whole gateway on this machine, in the foreground.

Starts Redis, the small Ollama-like upstream, the agent with the example
policy and HAProxy with the shipped haproxy.cfg; creates a demo API key and
tells the story: a chat completion streaming through, a 401, a blocked
model pull, a 429. Then prints curl lines to try and runs until Ctrl-C
(`--once`: stops after the story, for tests and scripts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import time
from pathlib import Path

from spoa_agent.demo.stack import REPO, Gateway, free_port, haproxy_binaries
from spoa_agent.install.shipped import EXAMPLE_CONFIG as CONFIG

WORKDIR = REPO / ".demo"
MODEL = "llama3.2:1b"
CHAT = json.dumps({"model": MODEL, "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _call(port: int, method: str, path: str, key: str | None = None) -> str:
    """One request; its status, Retry-After if any, and the start of the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        conn.request(method, path, body=f'{{"model":"{MODEL}"}}' if method == "POST" else None,
                     headers=headers)
        resp = conn.getresponse()
        retry = resp.getheader("Retry-After")
        wait = f" (Retry-After: {retry})" if retry else ""
        return f"{resp.status}{wait} {resp.read().decode()[:110]}"
    finally:
        conn.close()


def _stream(port: int, key: str) -> list[str]:
    """A streamed chat completion, one line per chunk with its arrival time:
    the upstream sends a word every 300 ms and so must the gateway."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        started = time.monotonic()
        conn.request("POST", "/v1/chat/completions", body=CHAT, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "X-Upstream-Chunk-Delay": "0.3"})
        resp = conn.getresponse()
        lines = [f"HTTP {resp.status} {resp.getheader('Content-Type')}"]
        for raw in resp:
            event = raw.decode().strip()
            if not event.startswith("data: {"):
                continue
            delta = json.loads(event[6:])["choices"][0]["delta"].get("content")
            if delta:
                lines.append(f"+{time.monotonic() - started:4.2f}s  {delta!r}")
        return lines
    finally:
        conn.close()


class DemoError(Exception):
    pass


def _create_key(gw: Gateway, *args: str) -> str:
    created = gw.spoa_agent("token", "create", "--format", "json", *args)
    if created.returncode != 0:
        raise DemoError(f"could not create a key: {created.stderr.strip()}")
    return str(json.loads(created.stdout)["token"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="stop after the story instead of running until Ctrl-C")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the agent's policy (default: spoa_agent/files/agent.example.toml)")
    options = parser.parse_args()
    once, config = options.once, options.config.resolve()
    shown = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    if not config.is_file():
        print(f"demo: no config file at {config}", file=sys.stderr)
        return 2
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
        gw.start_upstream(record=False)  # a demo left running must not fill the disk
        gw.start_agent(config)
        gw.start_haproxy(haproxy)
        key = _create_key(gw, "--name", "demo")
        limited_key = _create_key(gw, "--name", "demo-limited", "--rate", "2/m")
        url, port = gw.url, gw.gateway_port
        cli = f"SPOA_AGENT_REDIS_URL={gw.redis_url} .venv/bin/spoa-agent"
        streamed = "\n    ".join(_stream(port, key))
        over_limit = "\n    ".join(
            f"call {n}: {_call(port, 'GET', '/api/tags', limited_key)}" for n in (1, 2, 3))
        print(f"""
spoa-agent demo: HAProxy {version} -> agent (Redis) -> a small Ollama-like upstream
  gateway   {url}
  agent     127.0.0.1:{gw.agent_port} (policy: {shown})
  redis     {gw.redis_url} (throwaway, nothing saved)
  logs      {WORKDIR.relative_to(REPO)}/agent.log (JSON lines), haproxy.log, upstream.log

A demo API key was created (shown once; Redis keeps only its argon2id hash):
  KEY={key}

1. A chat completion streams through, word by word as the upstream sends it:
    {streamed}
2. Without a key:              {_call(port, "GET", "/api/tags")}
3. A model pull is blocked:    {_call(port, "POST", "/api/pull", key)}
4. A key limited to 2/m (token create --rate 2/m), three calls:
    {over_limit}
   Every refusal is one JSON line in {WORKDIR.relative_to(REPO)}/agent.log, for fail2ban.

Try it yourself (paste the KEY= line first):
  curl -N {url}/v1/chat/completions -H "Authorization: Bearer $KEY" \\
       -H "X-Upstream-Chunk-Delay: 0.3" \\
       -d '{{"model":"{MODEL}","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl -i {url}/api/tags -H "x-api-key: $KEY"                     # the Anthropic SDK's header
  curl -i {url}/api/tags                                          # 401: no key
  curl -i -X POST {url}/api/pull -H "Authorization: Bearer $KEY"  # 403: blocked endpoint
  {cli} token list
  {cli} token revoke <id>   # the key gets 401 within a second
  {cli} --config {shown} check --method POST --path /api/pull
""", flush=True)
        if once:
            return 0
        print("Ctrl-C stops everything.", flush=True)
        while not stop:
            for name, proc in gw.processes.items():
                if proc.popen.poll() is not None:
                    print(f"demo: {name} exited ({proc.popen.returncode}); see {proc.log_path}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except (DemoError, OSError) as err:
        print(f"demo: {err}; see the logs in {WORKDIR.relative_to(REPO)}/", file=sys.stderr)
        return 1
    finally:
        gw.stop()
        print("\ndemo: stopped HAProxy, agent, upstream and Redis.")


if __name__ == "__main__":
    sys.exit(main())
