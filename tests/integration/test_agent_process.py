"""A real agent process and a raw SPOP peer: the happy path, every kind of
misbehaving peer, idle crowds, graceful shutdown and workers."""

from __future__ import annotations

import os
import signal
import socket
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, Process
from spoa_agent.spop import (
    Ack,
    AgentDisconnect,
    AgentHello,
    HaproxyDisconnect,
    HaproxyHello,
    Notify,
    SetVar,
    Status,
    encode_frame,
)
from tests.peer import HELLO, Peer

Agent = tuple[Gateway, Process]


def decision(ack: object) -> dict[str, object]:
    assert isinstance(ack, Ack), ack
    return {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}


def test_hello_then_decisions(agent: Agent) -> None:
    gw, _ = agent
    peer = Peer(gw.agent_port)
    reply = peer.hello()
    assert reply == AgentHello("2.0", 16380, frozenset({"pipelining"}))
    peer.notify(1, ip=IPv4Address("127.0.0.1"), method="GET", path="/api/tags")
    peer.notify(2, ip=IPv4Address("127.0.0.1"), method="POST", path="/api/pull")
    first, second = peer.read(), peer.read()
    assert (first.stream_id, decision(first)["decision"]) == (1, "allow")  # type: ignore[union-attr]
    assert decision(second) == {"decision": "deny", "status": 403,
                                "reason": "route_not_allowed", "rule": ""}


def test_healthcheck_hello_is_answered_and_closed(agent: Agent) -> None:
    gw, _ = agent
    peer = Peer(gw.agent_port)
    assert isinstance(peer.hello(HaproxyHello(("2.0",), 16380, frozenset(), True)), AgentHello)
    assert peer.closed()


def test_empty_notify_gets_empty_ack(agent: Agent) -> None:
    gw, _ = agent
    peer = Peer(gw.agent_port)
    peer.hello()
    peer.send(Notify(9, 4, ()))
    assert peer.read() == Ack(9, 4, ())


def test_haproxy_disconnect_is_answered(agent: Agent) -> None:
    gw, _ = agent
    peer = Peer(gw.agent_port)
    peer.hello()
    peer.send(HaproxyDisconnect(0, "going away"))
    assert peer.read_disconnect().status == Status.NORMAL
    assert peer.closed()


MISBEHAVING = [
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, Status.FRAME_TOO_BIG),
    ("oversized length", b"\xff\xff\xff\xff", False, Status.FRAME_TOO_BIG),
    ("notify before hello", encode_frame(Notify(1, 1, ())), False, Status.INVALID_FRAME),
    ("wrong version", encode_frame(HaproxyHello(("1.0",), 16380, frozenset())), False,
     Status.BAD_VERSION),
    ("tiny frame size", encode_frame(HaproxyHello(("2.0",), 100, frozenset())), False,
     Status.BAD_FRAME_SIZE),
    ("frame without FIN", b"\x00\x00\x00\x07\x03\x00\x00\x00\x00\x01\x01", True,
     Status.FRAGMENTATION_NOT_SUPPORTED),
    ("frame over negotiated size", (16381).to_bytes(4, "big") + b"\x03", True,
     Status.FRAME_TOO_BIG),
    ("garbage after hello", b"\x00\x00\x00\x08\x03\x00\x00\x00\x01\x01\x01\x09", True,
     Status.INVALID_FRAME),
]


@pytest.mark.parametrize(("name", "data", "after_hello", "status"), MISBEHAVING,
                         ids=[m[0] for m in MISBEHAVING])
def test_misbehaving_peer_is_disconnected_and_others_still_served(
    agent: Agent, name: str, data: bytes, after_hello: bool, status: Status
) -> None:
    gw, proc = agent
    good = Peer(gw.agent_port)
    good.hello()
    bad = Peer(gw.agent_port)
    if after_hello:
        bad.hello()
    bad.send_raw(data)
    assert bad.read_disconnect().status == status
    assert bad.closed()
    good.notify(5, method="GET", path="/api/version")
    assert decision(good.read())["decision"] == "allow"
    assert proc.popen.poll() is None


def test_truncated_frame_then_close_is_a_normal_close(agent: Agent) -> None:
    gw, proc = agent
    bad = Peer(gw.agent_port)
    bad.hello()
    bad.send_raw(encode_frame(Notify(1, 1, ()))[:6])
    bad.close()
    time.sleep(0.2)
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.log()


def test_reset_is_a_normal_close(agent: Agent) -> None:
    gw, proc = agent
    peer = Peer(gw.agent_port)
    peer.hello()
    peer.notify(1, method="GET", path="/api/tags")
    # SO_LINGER 0: close() sends an RST, as HAProxy 3.1+ may.
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    time.sleep(0.2)
    good = Peer(gw.agent_port)
    good.hello()
    good.notify(2, method="GET", path="/api/tags")
    assert decision(good.read())["decision"] == "allow"
    assert "Traceback" not in proc.log()


def test_thousand_idle_and_half_open_connections(agent: Agent) -> None:
    gw, proc = agent
    idle = []
    for i in range(1000):
        peer = Peer(gw.agent_port)
        if i % 2:
            peer.hello()  # idle after HELLO
        else:
            peer.send_raw(encode_frame(HELLO)[:7])  # half a HELLO, then silence
        idle.append(peer)
    good = Peer(gw.agent_port)
    good.hello()
    started = time.monotonic()
    for stream in range(50):
        good.notify(stream, method="GET", path="/api/tags")
    acks = [good.read() for _ in range(50)]
    assert time.monotonic() - started < 10.0  # not starved by the idle ones
    assert sorted(a.stream_id for a in acks) == list(range(50))  # type: ignore[union-attr]
    for peer in idle:
        peer.close()
    assert proc.popen.poll() is None


def test_connection_without_hello_is_closed_after_hello_timeout(
        tmp_path: Path, policy_only_config: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(policy_only_config.read_text().replace('hello_timeout = "5s"',
                                                         'hello_timeout = "300ms"'))
    gw = Gateway(tmp_path)
    try:
        gw.start_agent(config)
        peer = Peer(gw.agent_port)
        assert peer.read_disconnect().status == Status.TIMEOUT
    finally:
        gw.stop()


def test_sigterm_drains_and_says_goodbye(agent: Agent) -> None:
    gw, proc = agent
    peer = Peer(gw.agent_port)
    peer.hello()
    proc.popen.send_signal(signal.SIGTERM)
    frame = peer.read()
    assert isinstance(frame, AgentDisconnect) and frame.status == Status.NORMAL
    assert proc.popen.wait(10) == 0
    with pytest.raises(OSError):
        Peer(gw.agent_port)  # no longer accepting


def test_workers_share_one_port(tmp_path: Path, policy_only_config: Path) -> None:
    gw = Gateway(tmp_path)
    try:
        proc = gw.start_agent(policy_only_config, workers=2)
        deadline = time.monotonic() + 10
        children: list[str] = []
        while time.monotonic() < deadline and len(children) < 2:
            pid = proc.popen.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            time.sleep(0.1)
        assert len(children) == 2
        peers = [Peer(gw.agent_port) for _ in range(20)]
        for i, peer in enumerate(peers):
            peer.hello()
            peer.notify(i, method="POST", path="/api/chat")
        assert all(decision(p.read())["decision"] == "allow" for p in peers)
        assert proc.stop() == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(
                f"/proc/{pid}/status").read_text()
    finally:
        gw.stop()
