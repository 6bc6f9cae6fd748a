"""The shipped haproxy.cfg with real HAProxy 2.6 and 2.8, the real agent and
a small upstream: decisions reach clients, health checks, fail closed."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spoa_agent.demo.stack import HAPROXY_CFG, Gateway, haproxy_root
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer, request


def stats(gw: Gateway) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(gw.stats_socket))
        sock.sendall(b"show stat\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode()


def agent_status(gw: Gateway) -> str:
    for line in stats(gw).splitlines():
        fields = line.split(",")
        if fields[:2] == ["spoa-agents", "agent1"]:
            return fields[17]
    raise AssertionError("agent1 missing from stats")


def test_config_is_valid(haproxy: str, tmp_path: Path) -> None:
    result = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], cwd=haproxy_root(HAPROXY_CFG),
                            capture_output=True, text=True,
                            env={"HAPROXY_RUN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_allowed_request_reaches_upstream_without_credentials(gw: Gateway, key: str) -> None:
    status, headers, body = request(gw, "GET", "/api/tags", {
        "Authorization": f"Bearer {key}", "X-Api-Key": key, "X-Spoa-Principal": "forged"})
    assert status == 200
    # Who asked, as the agent decided: the client's forged value is replaced.
    assert headers["x-upstream-principal"] == "e2e-client"
    assert json.loads(body)["models"][0]["name"] == "llama3.2:1b"
    seen = headers["x-upstream-saw"].split(",")
    assert "authorization" not in seen and "x-api-key" not in seen


def test_blocked_endpoint_gets_the_agents_403(gw: Gateway, key: str) -> None:
    status, headers, body = request(gw, "POST", "/api/pull", bearer(key), body=b'{"model":"x"}')
    assert status == 403
    assert headers["content-type"] == "application/json"
    # Ollama's own error shape under /api/.
    assert json.loads(body) == {"error": "this endpoint is not exposed by the gateway"}
    assert '"event.action":"policy_denied"' in gw.processes["agent"].log()


def test_hundred_concurrent_requests_all_answered_correctly(gw: Gateway, key: str) -> None:
    cases = [("GET", "/api/tags", 200), ("POST", "/api/chat", 200), ("POST", "/api/pull", 403),
             ("GET", "/api/chat", 403), ("GET", "/v1/models/llama3.2:1b", 200)]
    work = [cases[i % len(cases)] for i in range(100)]

    def one(case: tuple[str, str, int]) -> bool:
        method, path, expected = case
        body = b"{}" if method == "POST" else None
        return request(gw, method, path, bearer(key), body)[0] == expected

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, work))
    assert all(results), f"{results.count(False)} of 100 wrong"


def test_health_checks_keep_the_agent_up(gw: Gateway) -> None:
    time.sleep(4.5)  # more than two check intervals (inter 2s, fall 2)
    assert agent_status(gw) == "UP"


def wait_for_status(gw: Gateway, key: str, expected: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if request(gw, "GET", "/api/tags", bearer(key))[0] == expected:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"no {expected} within {timeout}s")


def test_agent_down_fails_closed_and_recovers(gw: Gateway, key: str) -> None:
    assert request(gw, "GET", "/api/tags", bearer(key))[0] == 200
    gw.processes["agent"].stop(sig=9)
    # Within SPOE's processing timeout (1s) plus slack: never the upstream.
    status, _, body = request(gw, "GET", "/api/tags", bearer(key))
    assert status == 503
    assert json.loads(body)["error"] == ("the gateway cannot check requests right now; "
                                         "retry in a few seconds")
    gw.start_agent(EXAMPLE_CONFIG)
    wait_for_status(gw, key, 200, timeout=10)
