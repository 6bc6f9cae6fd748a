"""What counting LLM usage costs the gateway (issue 14's goal: at most 10% of
req/s), and whether the counts stay exact under load.

    .venv/bin/python bench/usage_cost.py [--haproxy 2.8] [--duration 10] [--rounds 2]

The whole gateway with the shipped haproxy.cfg (Redis, the agent with the
example policy and its limits raised, HAProxy), in front of an upstream that
costs next to nothing: a second HAProxy answering every request with an
OpenAI chat completion that reports its usage. wrk sends a cached key's
chat completions (`wrk -t2 -c64`, POST); rows alternate between the shipped config
(counting: the Lua filter reads every answer, the Lua task sends each record
to the agent, the agent adds it in Redis) and the same config without the
`filter lua.spoa-usage` line, `--rounds` times. Each row gives req/s and the
CPU time per request of HAProxy, the agent and Redis; each counting row also
checks that the usage in Redis grew by exactly the requests wrk completed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import cpu_seconds  # noqa: E402 (the process and its descendants)
from spoa_agent.demo.stack import (  # noqa: E402 (after the path above)
    Gateway,
    haproxy_binaries,
    spawn,
    wait_for_port,
)
from spoa_agent.install.shipped import EXAMPLE_CONFIG, HAPROXY_CFG  # noqa: E402
from spoa_agent.store.redis import sync_client  # noqa: E402
from spoa_agent.usage.store import read_cells  # noqa: E402

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from the upstream."}}],
    "usage": {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}})
UPSTREAM_CFG = """global
    nbthread 1
defaults
    mode http
    timeout client 1m
    timeout server 1m
    timeout connect 5s
frontend upstream
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string '{answer}'
"""
LOOSE = {'per_key = "120/m"': 'per_key = "100000000/m"',
         'per_ip = "600/m"': 'per_ip = "100000000/m"'}


def counted_requests(gw: Gateway) -> int:
    client = sync_client(gw.redis_url)
    try:
        now = time.time()
        return sum(cell.usage.requests for cell in read_cells(client, now - 3600, now))
    finally:
        client.close()


# What is counted: LLM calls. A chat completion, as a client posts it.
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}'
"""


def wrk(gw: Gateway, key: str, duration: float) -> tuple[int, float]:
    script = gw.workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration:g}s", "-s", str(script), "-H",
                          f"Authorization: Bearer {key}", f"{gw.url}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} non-2xx answers:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return requests, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def row(gw: Gateway, haproxy: str, cfg: Path, key: str, duration: float,
        counting: bool) -> dict[str, object]:
    gw.start_haproxy(haproxy, cfg)
    try:
        for _ in range(50):  # the key verified and cached, connections warm
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Authorization: Bearer {key}",
                            "-d", "{}", f"{gw.url}/v1/chat/completions"], check=True)
        time.sleep(1)  # the warm-up's records counted
        before_counted = counted_requests(gw)
        pids = {name: gw.processes[name].popen.pid for name in ("haproxy", "agent", "redis")}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        requests, rps = wrk(gw, key, duration)
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        result: dict[str, object] = {
            "counting": counting, "requests": requests, "requests_per_s": round(rps),
            **{f"{name}_cpu_us": round(used[name] / requests * 1e6, 1) for name in used}}
        if counting:  # what HAProxy still holds is sent within a second or so
            deadline = time.monotonic() + 30
            while counted_requests(gw) - before_counted < requests \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            # wrk stops with requests in flight: their answers count too.
            result["counted"] = counted_requests(gw) - before_counted
            result["seconds_to_count"] = round(30 - (deadline - time.monotonic()), 1)
    finally:
        gw.processes.pop("haproxy").stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--haproxy", default="2.6")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    haproxy = haproxy_binaries().get(args.haproxy, args.haproxy)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"usage-cost-{os.getpid()}"
    workdir.mkdir()
    config = workdir / "agent.toml"
    text = EXAMPLE_CONFIG.read_text()
    for shipped, loose in LOOSE.items():
        text = text.replace(shipped, loose)
    config.write_text(text)
    shipped_cfg = HAPROXY_CFG.read_text()
    assert "    filter lua.spoa-usage\n" in shipped_cfg
    # The copy lives beside the shipped one's directory layout: HAProxy runs
    # from the directory above its config's.
    without = HAPROXY_CFG.parent / f".bench-without-usage-{os.getpid()}.cfg"
    without.write_text(shipped_cfg.replace("    filter lua.spoa-usage\n", ""))
    upstream_cfg = workdir / "upstream.cfg"
    gw = Gateway(workdir)
    upstream_cfg.write_text(UPSTREAM_CFG.format(port=gw.upstream_port,
                                                answer=ANSWER.replace("'", "")))
    rows = []
    try:
        gw.start_redis()
        proc = spawn("upstream", [haproxy, "-db", "-f", str(upstream_cfg)], workdir)
        wait_for_port(gw.upstream_port, proc.popen)
        gw.processes["upstream"] = proc
        gw.start_agent(config)
        key = json.loads(gw.spoa_agent("token", "create", "--name", "bench", "--format",
                                       "json").stdout)["token"]
        for _ in range(args.rounds):
            for counting, cfg in ((True, HAPROXY_CFG), (False, without)):
                rows.append(row(gw, haproxy, cfg, key, args.duration, counting))
                print(rows[-1], flush=True)
    finally:
        gw.stop()
        without.unlink(missing_ok=True)
    on = [r for r in rows if r["counting"]]
    off = [r for r in rows if not r["counting"]]
    mean = lambda rs, k: sum(float(str(r[k])) for r in rs) / len(rs)  # noqa: E731
    print(f"\nHAProxy {args.haproxy}, {args.rounds} rounds of {args.duration:g} s, wrk -t2 -c64:")
    print("| counting | req/s | HAProxy CPU us/req | agent CPU us/req | Redis CPU us/req |")
    print("|---|---:|---:|---:|---:|")
    for label, rs in (("on", on), ("off", off)):
        print(f"| {label} | {mean(rs, 'requests_per_s'):,.0f} | {mean(rs, 'haproxy_cpu_us'):.1f} "
              f"| {mean(rs, 'agent_cpu_us'):.1f} | {mean(rs, 'redis_cpu_us'):.1f} |")
    cost = 1 - mean(on, "requests_per_s") / mean(off, "requests_per_s")
    print(f"counting costs {cost:.1%} of req/s (goal: at most 10%)")
    # wrk stops with up to 64 requests in flight, whose answers count too.
    exact = all(0 <= int(str(r["counted"])) - int(str(r["requests"])) <= 64 for r in on)
    print("every request counted:", "yes" if exact else "NO",
          [(r["requests"], r["counted"]) for r in on])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
