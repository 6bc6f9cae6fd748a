"""SIGHUP: a broken config is refused and the old policy serves on; a good
one takes over within a second; no request fails across the switch."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from spoa_agent.demo.stack import Gateway
from spoa_agent.spop import Ack, SetVar
from tests.peer import Peer

EXTRA_ROUTE = '\n[[routes]]\nname = "ollama-ps"\nmethods = ["GET"]\npath = "/api/ps"\n'


def decide(peer: Peer, stream: int, path: str) -> str:
    peer.notify(stream, method="GET", path=path)
    ack = peer.read()
    assert isinstance(ack, Ack)
    found = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
    return str(found["decision"])  # KeyError: an empty ACK, i.e. a failed request


def test_sighup_reload(tmp_path: Path, policy_only_config: Path) -> None:
    config = tmp_path / "agent.toml"
    original = policy_only_config.read_text()
    config.write_text(original)
    gw = Gateway(tmp_path)
    try:
        agent = gw.start_agent(config)
        peer = Peer(gw.agent_port)
        peer.hello()
        assert decide(peer, 1, "/api/ps") == "deny"

        failures: list[BaseException] = []
        stop = threading.Event()

        def load_loop() -> None:  # another connection, deciding all along
            other = Peer(gw.agent_port)
            other.hello()
            stream = 0
            try:
                while not stop.is_set():
                    stream += 1
                    assert decide(other, stream, "/api/tags") == "allow"
            except BaseException as err:
                failures.append(err)

        loop = threading.Thread(target=load_loop)
        loop.start()
        try:
            config.write_text(original + "\n[[routes]]\npath = 'no-slash'\nmethods = ['GET']\n")
            agent.popen.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert "config_reload_failed" in agent.log()
            assert decide(peer, 2, "/api/ps") == "deny"  # the old policy, still serving

            config.write_text(original + EXTRA_ROUTE)
            agent.popen.send_signal(signal.SIGHUP)
            switched = time.monotonic()
            stream = 3
            while decide(peer, stream, "/api/ps") != "allow":
                assert time.monotonic() - switched < 10.0, "new policy not in force"
                stream += 1
                time.sleep(0.01)
            time.sleep(0.3)
        finally:
            stop.set()
            loop.join(5)
        assert failures == []
        assert "config_reloaded" in agent.log()
    finally:
        gw.stop()


def test_sighup_with_an_empty_or_undecodable_file_keeps_the_policy(
        tmp_path: Path, policy_only_config: Path) -> None:
    config = tmp_path / "agent.toml"
    original = policy_only_config.read_text()
    config.write_text(original)
    gw = Gateway(tmp_path)
    try:
        agent = gw.start_agent(config)
        peer = Peer(gw.agent_port)
        peer.hello()
        stream = 0
        for broken, problem in ((b"", "routes: none, so every request would be refused"),
                                (original.encode() + b"\n# caf\xe9\n", "not UTF-8 text")):
            config.write_bytes(broken)
            failed = agent.log().count("config_reload_failed")
            agent.popen.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while agent.log().count("config_reload_failed") == failed:
                assert time.monotonic() < deadline, "SIGHUP not handled"
                time.sleep(0.05)
            assert f"{config}: {problem}" in agent.log()
            for path, decision in (("/api/tags", "allow"), ("/api/ps", "deny")):
                stream += 1
                assert decide(peer, stream, path) == decision  # the old policy
        assert "config_reloaded" not in agent.log()
        assert agent.popen.poll() is None
    finally:
        gw.stop()
