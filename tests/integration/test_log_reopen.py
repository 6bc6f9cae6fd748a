"""SIGUSR1 after logrotate moved the log file away: the agent (and with
--workers, every worker and the supervisor) writes to a new file at the
same path, the rotated file keeps what came before, and no decision stops."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway
from tests.integration.test_reload import decide
from tests.peer import Peer


def actions(path: Path) -> list[str]:
    return [json.loads(line)["event.action"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_reopens_the_log_file(tmp_path: Path, policy_only_config: Path,
                                      workers: int) -> None:
    log_file, rotated = tmp_path / "agent.log", tmp_path / "agent.log.1"
    config = tmp_path / "agent.toml"
    config.write_text(policy_only_config.read_text().replace(
        "[log]\n", f'[log]\nfile = "{log_file}"\n', 1))
    gw = Gateway(tmp_path)
    try:
        agent = gw.start_agent(config, workers=workers)
        peers = [Peer(gw.agent_port) for _ in range(workers)]
        for peer in peers:
            peer.hello()
        assert decide(peers[0], 1, "/api/pull") == "deny"
        log_file.rename(rotated)  # what logrotate does first
        agent.popen.send_signal(signal.SIGUSR1)
        reopened_by = workers + (1 if workers > 1 else 0)  # and the supervisor
        deadline = time.monotonic() + 5
        while not log_file.exists() or actions(log_file).count("log_reopened") < reopened_by:
            assert time.monotonic() < deadline, "the agent did not reopen its log"
            time.sleep(0.05)
        for stream, peer in enumerate(peers, start=2):
            assert decide(peer, stream, "/api/pull") == "deny"
        time.sleep(0.2)
        assert actions(log_file).count("policy_denied") == workers
        assert actions(rotated).count("policy_denied") == 1
        assert agent.popen.poll() is None
    finally:
        gw.stop()
