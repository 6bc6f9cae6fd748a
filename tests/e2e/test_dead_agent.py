"""A dead agent fails fast: after kill -9, requests get 503 well within SPOE's
`timeout processing`, not after it, and 200 again soon after a restart."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spoa_agent.demo.stack import Gateway, gateway, haproxy_version
from tests.e2e.client import error_message, request

# tests/conftest.py: HAProxy waits this long for a decision in every test.
PROCESSING_TIMEOUT = 5.0
FAST = 1.0


def timed(gw: Gateway) -> tuple[int, float, str]:
    started = time.monotonic()
    status, _, body = request(gw, "GET", "/api/tags")
    return status, time.monotonic() - started, error_message(body) if status != 200 else ""


def test_dead_agent_answers_503_at_once_and_recovers(haproxy: str, tmp_path: Path,
                                                     policy_only_config: Path) -> None:
    assert os.environ["SPOE_PROCESSING_TIMEOUT"] == f"{PROCESSING_TIMEOUT:.0f}s"
    with gateway(tmp_path, haproxy, policy_only_config) as gw:
        assert request(gw, "GET", "/api/tags")[0] == 200
        gw.processes["agent"].stop(sig=9)

        # Clients keep coming, one every 100 ms, each on its own connection:
        # none may wait for another's answer.
        with ThreadPoolExecutor(20) as pool:
            pending = []
            for _ in range(20):
                pending.append(pool.submit(timed, gw))
                time.sleep(0.1)
            answers = [future.result() for future in pending]
        assert {status for status, _, _ in answers} == {503}
        assert all("cannot check requests" in message for _, _, message in answers)
        took = [round(seconds, 3) for _, seconds, _ in answers]
        # HAProxy 2.6 leaves the requests queued at the moment its first
        # connection to the dead agent is refused (one per thread) waiting for
        # the processing timeout; 2.8 refuses them at once. Every later one is
        # refused at once: the agent is marked down by that refusal.
        slow = 2 if haproxy_version(haproxy) == "2.6" else 0
        assert all(seconds < FAST for seconds in took[slow:]), took
        assert all(seconds < PROCESSING_TIMEOUT + FAST for seconds in took), took

        gw.start_agent(policy_only_config)  # returns once it listens
        restarted = time.monotonic()
        while request(gw, "GET", "/api/tags")[0] != 200:
            # Checked every 500 ms while down (downinter), not every 2 s.
            assert time.monotonic() - restarted < 3.0, "agent not back in service"
            time.sleep(0.05)
        assert [request(gw, "GET", "/api/tags")[0] for _ in range(3)] == [200] * 3
