"""The agent's side of one SPOP connection, sans-IO.

`receive_data(bytes)` then `next_event()` until NEED_DATA; `send(event)` gives
the bytes to write. The connection checks the frame size before buffering a
frame, negotiates HELLO, and raises SpopError with the status the server must
send in AGENT-DISCONNECT. No sockets, clocks or logging here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum, auto
from typing import Final

from spoa_agent.spop.constants import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    SPOP_VERSION,
    FrameFlags,
    FrameType,
    Status,
)
from spoa_agent.spop.data import FRAME_HEADER, LENGTH
from spoa_agent.spop.errors import SpopError
from spoa_agent.spop.frames import (
    DECODERS,
    Ack,
    Action,
    AgentDisconnect,
    AgentHello,
    Frame,
    HaproxyHello,
    compile_schemas,
    decode_header,
    decode_notify,
    encode_ack,
    encode_frame,
)


class NeedData:
    """Marker: the buffer holds no whole frame yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """Marker: the peer closed its side (FIN or RST); nothing more will come."""

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()


class State(Enum):
    AWAIT_HELLO = auto()
    READY = auto()
    CLOSED = auto()


# Frames HAProxy may send once HELLO is done; the rest are the agent's own.
_FROM_HAPROXY: Final = {FrameType.NOTIFY, FrameType.HAPROXY_DISCONNECT}
_FROM_AGENT: Final = {FrameType.AGENT_HELLO, FrameType.AGENT_DISCONNECT, FrameType.ACK}
_FIN: Final = int(FrameFlags.FIN)  # a plain int: IntFlag arithmetic is slow on the hot path
# The states the hot path compares with, as names of this module: reading an
# Enum's member from its class costs a lookup of ~50 ns (Python 3.11).
_READY: Final = State.READY
_CLOSED: Final = State.CLOSED
_NOTIFY: Final = int(FrameType.NOTIFY)
_NOTIFY_IDS: Final = FRAME_HEADER.size + 1  # where a NOTIFY's one-byte frame id is
_LONG_VARINT: Final = 240  # a varint this large or larger takes more than one byte
# Compact the receive buffer once this much of it has been consumed.
_COMPACT_AT: Final = 64 * 1024


def _speaks_v2(versions: tuple[str, ...]) -> bool:
    # "When a major version is announced by HAProxy, it means it also support
    # all previous minor versions": any 2.x lets us answer 2.0.
    for version in versions:
        major, _, minor = version.partition(".")
        if major == "2" and minor.isdigit():
            return True
    return False


class AgentConnection:
    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        capabilities: frozenset[str] = frozenset({"pipelining"}),
        schemas: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if max_frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be at least {MIN_FRAME_SIZE}")
        self.state = State.AWAIT_HELLO
        # Ours until HELLO, then min(ours, HAProxy's).
        self.max_frame_size = max_frame_size
        self.capabilities = capabilities
        self.healthcheck = False
        # Messages whose arguments are decoded by position (MessageValues).
        self._schemas = compile_schemas(schemas) if schemas else None
        # What was read and not consumed yet, from _pos: the read itself
        # (bytes) when nothing was left over before it, which is the usual
        # case (HAProxy's writes end on a frame), else a bytearray.
        self._buffer: bytes | bytearray = b""
        self._pos = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; b"" means the peer closed."""
        if not data:
            self._eof = True
        elif self.state is not _CLOSED:
            buffer = self._buffer
            if self._pos == len(buffer):  # nothing left over: no copy
                self._buffer = data if type(data) is bytes else bytes(data)
                self._pos = 0
                return
            if type(buffer) is bytes:  # a partial frame: from now on, a buffer to grow
                self._buffer = buffer = bytearray(memoryview(buffer)[self._pos :])
                self._pos = 0
            buffer += data

    def next_event(self) -> Frame | NeedData | Closed:
        while self.state is not _CLOSED:
            buffer, pos = self._buffer, self._pos
            avail = len(buffer) - pos
            if avail < LENGTH.size:
                return CLOSED if self._eof else NEED_DATA
            (length,) = LENGTH.unpack_from(buffer, pos)
            # Checked on the length alone, before the frame is buffered.
            if length > self.max_frame_size:
                raise SpopError(
                    Status.FRAME_TOO_BIG,
                    f"frame of {length} bytes over max-frame-size {self.max_frame_size}",
                )
            if avail < LENGTH.size + length:
                return CLOSED if self._eof else NEED_DATA
            start = pos + LENGTH.size
            self._pos = stop = start + length
            if stop == len(buffer) and type(buffer) is bytes:
                # The read's last frame, usually its only one: decoded in
                # place (it runs to the end of the read), not copied.
                frame, at = buffer, start
            else:
                frame, at = bytes(buffer[start:stop]), 0
                if type(buffer) is bytearray:
                    if stop == len(buffer):
                        self._buffer, self._pos = b"", 0
                    elif stop > _COMPACT_AT:
                        del buffer[:stop]
                        self._pos = 0
            # The agent's hot path, one per request: a NOTIFY once HELLO is
            # done, FIN set (the low byte of the flags), both ids under 240
            # (one byte each). Its header is read here; any other frame, or
            # a NOTIFY with longer ids, goes through decode_header.
            if (self.state is _READY and length > _NOTIFY_IDS and frame[at] == _NOTIFY
                    and frame[at + 4] & _FIN and frame[at + 5] < _LONG_VARINT
                    and frame[at + 6] < _LONG_VARINT):
                return decode_notify(frame, at + _NOTIFY_IDS + 1, frame[at + 5],
                                     frame[at + 6], self._schemas)
            if at:
                frame = frame[at:]
            event = self._on_frame(frame)
            if event is not None:
                return event
        return CLOSED

    def _on_frame(self, frame: bytes) -> Frame | None:
        head = decode_header(frame)
        kind = head.kind
        if kind == FrameType.UNSET or not head.flags & _FIN:
            raise SpopError(
                Status.FRAGMENTATION_NOT_SUPPORTED, "fragmented frames are not supported"
            )
        if self.state is State.AWAIT_HELLO:
            if kind != FrameType.HAPROXY_HELLO:
                raise SpopError(Status.INVALID_FRAME, "expected HAPROXY-HELLO first")
            hello = DECODERS[kind](head, frame)
            assert type(hello) is HaproxyHello
            self._negotiate(hello)
            return hello
        if kind == FrameType.NOTIFY:
            return decode_notify(frame, head.payload_at, head.stream_id, head.frame_id,
                                 self._schemas)
        if kind in _FROM_HAPROXY:
            return DECODERS[kind](head, frame)
        if kind == FrameType.HAPROXY_HELLO or kind in _FROM_AGENT:
            raise SpopError(Status.INVALID_FRAME, f"unexpected frame type {kind}")
        return None  # "Unknown frames may be silently skipped."

    def _negotiate(self, hello: HaproxyHello) -> None:
        if not _speaks_v2(hello.supported_versions):
            raise SpopError(
                Status.BAD_VERSION,
                f"unsupported versions {','.join(hello.supported_versions)}; agent speaks 2.0",
            )
        if hello.max_frame_size < MIN_FRAME_SIZE:
            raise SpopError(
                Status.BAD_FRAME_SIZE,
                f"max-frame-size {hello.max_frame_size} under {MIN_FRAME_SIZE}",
            )
        self.max_frame_size = min(self.max_frame_size, hello.max_frame_size)
        self.capabilities = self.capabilities & hello.capabilities
        self.healthcheck = hello.healthcheck
        self.state = State.READY

    def hello_reply(self) -> AgentHello:
        """The AGENT-HELLO answering the HELLO that next_event returned."""
        return AgentHello(SPOP_VERSION, self.max_frame_size, self.capabilities)

    def send(self, event: AgentHello | AgentDisconnect | Ack) -> bytes:
        data = encode_frame(event)
        if type(event) is AgentDisconnect:
            self.state = State.CLOSED
        else:
            self._check_size(data)
        return data

    def ack(self, stream_id: int, frame_id: int, actions: Sequence[Action] = ()) -> bytes:
        """send(Ack(stream_id, frame_id, actions)) without building the Ack:
        the same bytes and the same size check, for the one frame the server
        sends per request."""
        data = encode_ack(stream_id, frame_id, actions)
        if len(data) - LENGTH.size > self.max_frame_size:
            self._check_size(data)  # raises
        return data

    def _check_size(self, data: bytes) -> None:
        if len(data) - LENGTH.size > self.max_frame_size:
            # Only our own handlers can cause this; the server answers an
            # empty ACK instead so HAProxy still gets its reply at once.
            raise ValueError(f"frame of {len(data)} bytes over max-frame-size")
