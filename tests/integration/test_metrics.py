"""Prometheus metrics and /health from a real agent, with and without Redis."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

from spoa_agent.demo.stack import Gateway, free_port
from tests.conftest import EXAMPLE_CONFIG
from tests.integration.test_agent_keys import answer, create
from tests.peer import Peer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_health(redis_gw: Gateway, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    text = EXAMPLE_CONFIG.read_text()
    assert '[metrics]\n' in text
    config.write_text(text.replace('[metrics]\n', f'[metrics]\nlisten = "127.0.0.1:{port}"\n', 1)
                      .replace('listen = ""\n', ""))
    key = create(redis_gw, "--name", "counted")
    agent = redis_gw.start_agent(config)
    peer = Peer(redis_gw.agent_port)
    peer.hello()
    assert answer(peer, 1, key["token"])["decision"] == "allow"
    assert answer(peer, 2, key["token"])["decision"] == "allow"
    assert answer(peer, 3, None)["reason"] == "missing_credential"

    status, text = get(port, "/metrics")
    assert status == 200
    assert metric(text, 'spoa_decisions_total{outcome="allow",reason="allowed"}') == 2
    assert metric(text, 'spoa_decisions_total{outcome="deny",reason="missing_credential"}') == 1
    assert metric(text, "spoa_decision_seconds_count") == 3
    assert metric(text, 'spoa_key_cache_total{result="hit"}') == 1
    assert metric(text, "spoa_argon2_verifications_total") == 1
    assert metric(text, 'spoa_spop_frames_total{type="notify"}') == 3
    # One key lookup (then cached), one limit script call per allowed request.
    assert metric(text, 'spoa_redis_calls_total{purpose="keys"}') == 1
    assert metric(text, 'spoa_redis_calls_total{purpose="ratelimit"}') == 2

    status, body = get(port, "/health")
    assert status == 200
    report = json.loads(body)
    assert (report["status"], report["redis"], report["config"]) == ("ok", True, str(config))

    redis_gw.processes["redis"].stop(sig=signal.SIGKILL)
    status, body = get(port, "/health")
    assert status == 503
    assert json.loads(body)["redis"] is False
    assert agent.popen.poll() is None
