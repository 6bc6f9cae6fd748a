"""No one SPOP connection starves the others or grows the agent's memory.

In process, with a stand-in transport: the work budget per connection and turn,
round robin between connections, reading stopped while frames are left over or
the peer does not read its ACKs. Against a real `spoa-agent serve`: a flooding
connection (reading its ACKs or not) leaves another one answered, and 100 MB
sent by a peer that never reads does not end up in the agent's memory.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import structlog

from spoa_agent.config import ServerConfig
from spoa_agent.demo.stack import Gateway, Process
from spoa_agent.server import Actions, Agent
from spoa_agent.server.protocol import MESSAGES_PER_TURN, WRITE_HIGH, SpopProtocol
from spoa_agent.spop import (
    Ack,
    AgentHello,
    Message,
    Notify,
    SetVar,
    decode_frame,
    encode_frame,
)
from tests.peer import HELLO, Peer

# --- in process: the mechanisms -------------------------------------------------


class FakeTransport:
    """What SpopProtocol asks of its transport, recorded."""

    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.written: list[bytes] = []
        self.limits: tuple[int, int] | None = None

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def acks(self) -> list[Ack]:
        data = b"".join(self.written)
        frames, pos = [], 0
        while pos < len(data):
            size = int.from_bytes(data[pos:pos + 4], "big")
            frames.append(decode_frame(data[pos + 4:pos + 4 + size]))
            pos += 4 + size
        return [f for f in frames if isinstance(f, Ack)]


def notifies(count: int, first: int = 1) -> bytes:
    return b"".join(encode_frame(Notify(n, 1, (Message("m", {}),)))
                    for n in range(first, first + count))


def connected(agent: Agent, **settings: Any) -> tuple[SpopProtocol, FakeTransport]:
    protocol = SpopProtocol(agent, ServerConfig(**settings), structlog.get_logger(),
                            lambda _: None)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(encode_frame(HELLO))
    assert isinstance(decode_frame(transport.written.pop()[4:]), AgentHello)
    return protocol, transport


def counting_agent() -> tuple[Agent, list[int]]:
    agent, handled = Agent(), [0]

    def handler(message: Message) -> Actions:
        handled[0] += 1
        return [SetVar("ok", True)]

    agent.register("m", handler)
    return agent, handled


async def next_turn() -> None:
    await asyncio.sleep(0)  # every callback queued by call_soon runs before this returns


def test_one_read_is_handled_a_budget_per_turn_and_not_read_on_meanwhile() -> None:
    async def main() -> None:
        agent, handled = counting_agent()
        protocol, transport = connected(agent)
        assert transport.limits is not None and transport.limits[0] == WRITE_HIGH
        frames = 3 * MESSAGES_PER_TURN + 10
        protocol.data_received(notifies(frames))
        assert handled[0] == MESSAGES_PER_TURN
        assert not transport.reading  # frames left over: read no more
        assert len(transport.written) == 1  # the turn's ACKs in one write
        for turn in (2, 3):
            await next_turn()
            assert handled[0] == turn * MESSAGES_PER_TURN
            assert not transport.reading
        await next_turn()
        assert handled[0] == frames
        assert transport.reading  # nothing left: read again
        assert [a.stream_id for a in transport.acks()] == list(range(1, frames + 1))
        assert protocol.conn.buffered == 0

    asyncio.run(main())


def test_connections_with_backlogs_take_turns() -> None:
    async def main() -> None:
        agent, _ = counting_agent()
        first, first_out = connected(agent)
        second, second_out = connected(agent)
        first.data_received(notifies(4 * MESSAGES_PER_TURN))
        second.data_received(notifies(4 * MESSAGES_PER_TURN))
        for turn in range(1, 5):
            assert len(first_out.acks()) == len(second_out.acks()) == turn * MESSAGES_PER_TURN
            await next_turn()

    asyncio.run(main())


def test_a_notify_of_many_messages_counts_each_message() -> None:
    async def main() -> None:
        agent, handled = counting_agent()
        protocol, _ = connected(agent)
        big = Notify(1, 1, tuple(Message("m", {}) for _ in range(MESSAGES_PER_TURN)))
        protocol.data_received(encode_frame(big) + notifies(1, first=2))
        assert handled[0] == MESSAGES_PER_TURN  # the second NOTIFY waits a turn
        await next_turn()
        assert handled[0] == MESSAGES_PER_TURN + 1

    asyncio.run(main())


def test_a_peer_not_reading_is_not_read_until_it_does() -> None:
    async def main() -> None:
        agent, handled = counting_agent()
        protocol, transport = connected(agent)
        protocol.pause_writing()  # the transport's write buffer is over WRITE_HIGH
        assert not transport.reading
        protocol.data_received(notifies(5))  # what was read before the pause took effect
        await next_turn()
        assert handled[0] == 0  # its ACKs would only pile up
        protocol.resume_writing()
        assert not transport.reading  # the frames it already sent come first
        await next_turn()
        assert handled[0] == 5 and transport.reading

    asyncio.run(main())


def test_in_flight_cap_then_write_stall_resume_in_either_order() -> None:
    async def main() -> None:
        agent = Agent()
        gate = asyncio.Event()

        async def wait() -> Actions:
            await gate.wait()
            return [SetVar("ok", True)]

        agent.register("m", lambda message: wait())
        protocol, transport = connected(agent, max_in_flight=2)
        protocol.data_received(notifies(6))
        assert len(protocol.tasks) == 2 and not transport.reading
        protocol.pause_writing()
        gate.set()
        for _ in range(5):
            await next_turn()
        assert len(protocol.tasks) == 0 and not transport.reading  # still not writable
        protocol.resume_writing()
        for _ in range(20):
            await next_turn()
        assert sorted(a.stream_id for a in transport.acks()) == list(range(1, 7))
        assert transport.reading

    asyncio.run(main())


# --- a real agent process ----------------------------------------------------------

AgentProc = tuple[Gateway, Process]
REQUEST: dict[str, Any] = {"ip": IPv4Address("192.0.2.7"), "method": "GET", "path": "/api/tags"}
# Generous: a gateway request is answered within a turn of the agent's loop,
# milliseconds; a starved one waits as long as the flood lasts.
ANSWERED_WITHIN = 2.0


def flood_chunk() -> bytes:
    """A thousand pipelined NOTIFYs as HAProxy would send them, allowed ones."""
    return b"".join(encode_frame(Notify(n, 1, (Message("check-request", REQUEST),)))
                    for n in range(1, 1001))


class Flood:
    """One connection sending NOTIFYs as fast as the agent takes them, in a thread."""

    def __init__(self, port: int, read: bool, limit: int = 1 << 62) -> None:
        self.peer = Peer(port)
        self.peer.hello()
        self.sent = 0
        self.answered = 0  # bytes of ACKs read
        self.limit = limit
        self.last_progress = time.monotonic()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True)]
        if read:
            self.threads.append(threading.Thread(target=self._read, daemon=True))
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        chunk = memoryview(flood_chunk())
        self.peer.sock.settimeout(0.5)
        while not self.stop.is_set() and self.sent < self.limit:
            offset = 0
            while offset < len(chunk) and not self.stop.is_set():
                try:
                    sent = self.peer.sock.send(chunk[offset:])
                except TimeoutError:
                    continue  # the agent is not reading us
                except OSError:
                    return
                offset += sent
                self.sent += sent
                self.last_progress = time.monotonic()

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.peer.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.answered += len(data)

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_progress

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def floods() -> Iterator[list[Flood]]:
    opened: list[Flood] = []
    yield opened
    for flood in opened:
        flood.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def answered_in(peer: Peer, stream: int) -> float:
    """Seconds until the agent answered one NOTIFY on `peer` (allowed)."""
    started = time.monotonic()
    peer.notify(stream, **REQUEST)
    try:
        ack = peer.read()
    except TimeoutError:
        return float("inf")
    took = time.monotonic() - started
    assert isinstance(ack, Ack) and ack.stream_id == stream, ack
    assert {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}["decision"] == "allow"
    return took


@pytest.mark.parametrize("reads", [True, False], ids=["flood-reads-acks", "flood-never-reads"])
def test_a_flooding_connection_does_not_starve_another(
        agent: AgentProc, floods: list[Flood], reads: bool) -> None:
    gw, proc = agent
    good = Peer(gw.agent_port, timeout=ANSWERED_WITHIN)
    good.hello()
    flood = Flood(gw.agent_port, read=reads)
    floods.append(flood)
    while flood.sent < 1 << 20:  # the flood is under way (the agent reads it)
        assert flood.stalled_for() < 30, "the agent never read the flood"
        time.sleep(0.01)
    for stream in range(1, 21):
        assert answered_in(good, stream) < ANSWERED_WITHIN, f"NOTIFY {stream} starved"
    if reads:
        # The flood was served all along, not shut out to make room.
        before = flood.answered
        assert answered_in(good, 21) < ANSWERED_WITHIN
        deadline = time.monotonic() + 30
        while flood.answered == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flood.answered > before
    assert proc.popen.poll() is None


def test_a_peer_that_never_reads_cannot_grow_the_agents_memory(
        agent: AgentProc, floods: list[Flood]) -> None:
    gw, proc = agent
    good = Peer(gw.agent_port, timeout=ANSWERED_WITHIN)
    good.hello()
    for stream in range(1, 101):  # the agent's own buffers and caches warm
        answered_in(good, stream)
    before = rss_mb(proc.popen.pid)
    flood = Flood(gw.agent_port, read=False, limit=100 << 20)
    floods.append(flood)
    # Sent until 100 MB or until the agent stops taking it: its reads stop
    # once its write buffer is full, and the rest waits in the kernel's
    # socket buffers and then in the sender.
    deadline = time.monotonic() + 300
    while flood.sent < flood.limit and flood.stalled_for() < 3.0:
        assert time.monotonic() < deadline, f"{flood.sent >> 20} MB sent in 300 s"
        time.sleep(0.05)
    grown = rss_mb(proc.popen.pid) - before
    assert grown < 20, f"agent RSS grew by {grown:.1f} MB after {flood.sent >> 20} MB sent"
    assert flood.sent < flood.limit, "the agent kept reading a peer that reads nothing"
    assert answered_in(good, 101) < ANSWERED_WITHIN
    assert proc.popen.poll() is None


def test_unread_flood_connection_is_still_closed_cleanly(agent: AgentProc) -> None:
    gw, proc = agent
    peer = Peer(gw.agent_port)
    peer.hello()
    peer.sock.settimeout(0.5)
    chunk = flood_chunk()
    with pytest.raises(TimeoutError):  # the agent stops reading us, then the kernel
        for _ in range((100 << 20) // len(chunk)):
            peer.sock.sendall(chunk)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # an RST, with everything unread
    good = Peer(gw.agent_port, timeout=ANSWERED_WITHIN)
    good.hello()
    assert answered_in(good, 1) < ANSWERED_WITHIN
    time.sleep(0.2)
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.log()


def test_sigterm_does_not_wait_for_a_peer_that_never_reads(
        tmp_path: Path, policy_only_config: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(policy_only_config.read_text().replace('drain_timeout = "10s"',
                                                         'drain_timeout = "120s"'))
    gw = Gateway(tmp_path)
    try:
        proc = gw.start_agent(config)
        peer = Peer(gw.agent_port)
        peer.hello()
        peer.sock.settimeout(0.5)
        chunk = flood_chunk()
        with pytest.raises(TimeoutError):
            for _ in range((100 << 20) // len(chunk)):
                peer.sock.sendall(chunk)
        proc.popen.send_signal(signal.SIGTERM)
        # Nothing in flight: its goodbye cannot be delivered, so the connection
        # is dropped rather than waited on for the drain timeout.
        assert proc.popen.wait(60) == 0
    finally:
        gw.stop()
