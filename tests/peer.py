"""A raw SPOP peer playing HAProxy over a blocking socket, for tests."""

from __future__ import annotations

import socket
from typing import ClassVar

from spoa_agent.spop import (
    AgentDisconnect,
    Frame,
    HaproxyHello,
    Message,
    Notify,
    decode_frame,
    encode_frame,
)

HELLO = HaproxyHello(("2.0",), 16380, frozenset({"pipelining"}), False, "test-engine")


class Peer:
    # Every peer a test opens, closed after the test by conftest.
    opened: ClassVar[list[Peer]] = []

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        Peer.opened.append(self)

    def send(self, frame: Frame) -> None:
        self.sock.sendall(encode_frame(frame))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, hello: HaproxyHello = HELLO) -> Frame:
        self.send(hello)
        return self.read()

    def notify(self, stream_id: int, frame_id: int = 1, **args: object) -> None:
        self.send(Notify(stream_id, frame_id, (Message("check-request", args),)))  # type: ignore[arg-type]

    def _recv_exact(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read(self) -> Frame:
        head = self._recv_exact(4)
        if head is None:
            raise ConnectionError("agent closed the connection")
        body = self._recv_exact(int.from_bytes(head, "big"))
        if body is None:
            raise ConnectionError("agent closed mid-frame")
        return decode_frame(body)

    def read_disconnect(self) -> AgentDisconnect:
        frame = self.read()
        assert isinstance(frame, AgentDisconnect), frame
        return frame

    def closed(self) -> bool:
        """True once the agent has closed its side (after what was already read)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
