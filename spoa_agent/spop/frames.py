"""SPOP frames as events, and their encoding both ways (SPOE.txt 3.2).

Events are frozen, slotted dataclasses checked when built. `encode_frame`
turns any event into the bytes of one frame, length prefix included;
`decode_frame` turns one frame (without the prefix) back into an event.
Both directions exist for every frame type so that tests can play HAProxy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final, NamedTuple

from spoa_agent.record import Record
from spoa_agent.spop.constants import ActionType, DataType, FrameFlags, FrameType, Scope, Status
from spoa_agent.spop.data import (
    FRAME_HEADER,
    LENGTH,
    Buffer,
    Value,
    decode_bytes,
    decode_kv_list,
    decode_str,
    decode_value,
    decode_varint,
    encode_kv_list,
    encode_str,
    encode_value,
    encode_varint,
)
from spoa_agent.spop.errors import SpopError

_MAX_ARGS: Final = 255  # NB-ARGS is one byte
_LONG: Final = 240  # a varint this large or larger takes more than one byte
_VARINT_LAST: Final = 128  # a varint's bytes after the first: under this, its last one
# Plain ints: comparing with an enum member costs an attribute lookup each time.
_STRING: Final = int(DataType.STRING)
_NULL: Final = int(DataType.NULL)
_BINARY: Final = int(DataType.BINARY)
_IPV4: Final = int(DataType.IPV4)
_SIZED: Final = frozenset((_STRING, _BINARY))  # a length, then the bytes
# The same few client addresses come back request after request.
_ipv4: Final = functools.lru_cache(maxsize=65536)(IPv4Address)
# The same few argument names (spoe-agent.conf's) come in every NOTIFY: their
# bytes map to the str once decoded. Bounded: the peer chooses the names.
_ARG_NAMES: Final[dict[bytes, str]] = {}
_MAX_ARG_NAMES: Final = 1024


def _split_list(text: str) -> frozenset[str]:
    # "Spaces must be ignored, if any."
    return frozenset(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class HaproxyHello:
    supported_versions: tuple[str, ...]
    max_frame_size: int
    capabilities: frozenset[str]
    healthcheck: bool = False
    engine_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentHello:
    version: str
    max_frame_size: int
    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True)
class HaproxyDisconnect:
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class AgentDisconnect:
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Message:
    """One spoe-message of a NOTIFY: its name and its named arguments."""

    name: str
    args: Mapping[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.args) > _MAX_ARGS:
            raise ValueError(f"a message carries at most {_MAX_ARGS} arguments")


class MessageValues(Record):
    """A message decoded against the schema its handler declared: the values
    of its arguments in the schema's order, None for those not sent (as a
    NULL)."""

    __slots__ = ("name", "values")

    def __init__(self, name: str, values: list[Value]) -> None:
        self.name = name
        self.values = values

    def _fields(self) -> tuple[object, ...]:
        return self.name, self.values


# Per message name (its bytes on the wire): the name, each argument name's
# index among the values, and how many values. See compile_schemas().
Schemas = dict[bytes, tuple[str, dict[bytes, int], int]]


def compile_schemas(schemas: Mapping[str, Sequence[str]]) -> Schemas:
    """The form decode_notify() reads of {message name: argument names}."""
    compiled: Schemas = {}
    for name, arg_names in schemas.items():
        index_of = {arg.encode("utf-8", "surrogateescape"): i for i, arg in enumerate(arg_names)}
        if len(index_of) != len(arg_names):
            raise ValueError(f"{name!r}: an argument is named twice")
        compiled[name.encode("utf-8", "surrogateescape")] = (name, index_of, len(arg_names))
    return compiled


class Notify(Record):
    __slots__ = ("frame_id", "messages", "stream_id")

    def __init__(self, stream_id: int, frame_id: int,
                 messages: tuple[Message | MessageValues, ...]) -> None:
        self.stream_id = stream_id
        self.frame_id = frame_id
        self.messages = messages

    def _fields(self) -> tuple[object, ...]:
        return self.stream_id, self.frame_id, self.messages


@dataclass(frozen=True, slots=True)
class SetVar:
    name: str
    value: Value
    scope: Scope = Scope.TRANSACTION

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a variable needs a name")


@dataclass(frozen=True, slots=True)
class UnsetVar:
    name: str
    scope: Scope = Scope.TRANSACTION

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a variable needs a name")


class Encoded(Record):
    """Actions already encoded, for answers that repeat (an agent's decision
    variables): an ACK copies their bytes instead of encoding them again."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _fields(self) -> tuple[object, ...]:
        return (self.data,)

    @classmethod
    def of(cls, *actions: SetVar | UnsetVar) -> Encoded:
        return cls(b"".join([encode_action(action) for action in actions]))


Action = SetVar | UnsetVar | Encoded


@dataclass(frozen=True, slots=True)
class Ack:
    stream_id: int
    frame_id: int
    actions: tuple[Action, ...] = ()


Frame = HaproxyHello | AgentHello | HaproxyDisconnect | AgentDisconnect | Notify | Ack


# --- encoding -------------------------------------------------------------


def _frame(kind: FrameType, payload: bytes, stream_id: int = 0, frame_id: int = 0) -> bytes:
    body = (
        FRAME_HEADER.pack(kind, FrameFlags.FIN)
        + encode_varint(stream_id)
        + encode_varint(frame_id)
        + payload
    )
    return LENGTH.pack(len(body)) + body


def _encode_haproxy_hello(ev: HaproxyHello) -> bytes:
    items: list[tuple[str, Value]] = [
        ("supported-versions", ",".join(ev.supported_versions)),
        ("max-frame-size", ev.max_frame_size),
        ("capabilities", ",".join(sorted(ev.capabilities))),
    ]
    if ev.healthcheck:
        items.append(("healthcheck", True))
    if ev.engine_id is not None:
        items.append(("engine-id", ev.engine_id))
    return _frame(FrameType.HAPROXY_HELLO, encode_kv_list(items))


def _encode_agent_hello(ev: AgentHello) -> bytes:
    items: list[tuple[str, Value]] = [
        ("version", ev.version),
        ("max-frame-size", ev.max_frame_size),
        ("capabilities", ",".join(sorted(ev.capabilities))),
    ]
    return _frame(FrameType.AGENT_HELLO, encode_kv_list(items))


def _disconnect_payload(status: int, message: str) -> bytes:
    return encode_kv_list([("status-code", status), ("message", message)])


def _encode_haproxy_disconnect(ev: HaproxyDisconnect) -> bytes:
    return _frame(FrameType.HAPROXY_DISCONNECT, _disconnect_payload(ev.status, ev.message))


def _encode_agent_disconnect(ev: AgentDisconnect) -> bytes:
    return _frame(FrameType.AGENT_DISCONNECT, _disconnect_payload(ev.status, ev.message))


def _encode_notify(ev: Notify) -> bytes:
    parts = []
    for message in ev.messages:
        if type(message) is not Message:
            raise TypeError("only a Message, with its argument names, can be encoded")
        parts.append(encode_str(message.name))
        parts.append(bytes((len(message.args),)))
        parts.append(encode_kv_list(message.args.items()))
    return _frame(FrameType.NOTIFY, b"".join(parts), ev.stream_id, ev.frame_id)


def encode_action(action: Action) -> bytes:
    if type(action) is Encoded:
        return action.data
    # Agents answer with the same few variables over and over (decision,
    # status, reason): their bytes are cached instead of rebuilt for every
    # ACK. The value's type is part of the key because True == 1.
    value_type = type(action.value).__name__ if type(action) is SetVar else ""
    return _encode_action(action, value_type)


@functools.lru_cache(maxsize=4096)
def _encode_action(action: Action, value_type: str) -> bytes:
    if type(action) is SetVar:
        return (
            bytes((ActionType.SET_VAR, 3, action.scope))
            + encode_str(action.name)
            + encode_value(action.value)
        )
    if type(action) is UnsetVar:
        return bytes((ActionType.UNSET_VAR, 2, action.scope)) + encode_str(action.name)
    raise TypeError(f"not an SPOP action: {action!r}")


_ACK_HEADER: Final = FRAME_HEADER.pack(FrameType.ACK, FrameFlags.FIN)


def encode_ack(stream_id: int, frame_id: int, actions: Sequence[Action]) -> bytes:
    """The bytes of an ACK frame, as encode_frame(Ack(...)) gives them, without
    building the event: the server sends one per request. Its actions are
    mostly Encoded already (see Encoded), so they are copied, not encoded."""
    if len(actions) == 1 and type(actions[0]) is Encoded:  # an agent's usual answer
        payload = actions[0].data
    else:
        payload = b"".join([action.data if type(action) is Encoded else encode_action(action)
                            for action in actions])
    ids = bytes((stream_id, frame_id)) if stream_id < _LONG and frame_id < _LONG \
        else encode_varint(stream_id) + encode_varint(frame_id)
    return b"".join((LENGTH.pack(FRAME_HEADER.size + len(ids) + len(payload)), _ACK_HEADER,
                     ids, payload))


def _encode_ack(ev: Ack) -> bytes:
    return encode_ack(ev.stream_id, ev.frame_id, ev.actions)


_ENCODERS: Final[dict[type, Callable[..., bytes]]] = {
    HaproxyHello: _encode_haproxy_hello,
    AgentHello: _encode_agent_hello,
    HaproxyDisconnect: _encode_haproxy_disconnect,
    AgentDisconnect: _encode_agent_disconnect,
    Notify: _encode_notify,
    Ack: _encode_ack,
}


def encode_frame(event: Frame) -> bytes:
    """The bytes of one frame, 4-byte length prefix included."""
    return _ENCODERS[type(event)](event)


# --- decoding -------------------------------------------------------------


class FrameHeader(NamedTuple):
    # A tuple rather than a frozen dataclass: built once per frame, it is
    # several times cheaper to build.
    kind: int
    flags: int
    stream_id: int
    frame_id: int
    payload_at: int


def decode_header(buf: Buffer) -> FrameHeader:
    """Type, flags and ids of one frame given without its length prefix."""
    if len(buf) < FRAME_HEADER.size:
        raise SpopError(Status.INVALID_FRAME, "frame shorter than its header")
    kind, flags = FRAME_HEADER.unpack_from(buf, 0)
    stream_id, pos = decode_varint(buf, FRAME_HEADER.size)
    frame_id, pos = decode_varint(buf, pos)
    return FrameHeader(kind, flags, stream_id, frame_id, pos)


def _kv_str(items: Mapping[str, Value], key: str, missing: Status) -> str:
    value = items.get(key)
    if value is None:
        raise SpopError(missing, f"HELLO has no {key!r}")
    if type(value) is not str:
        raise SpopError(Status.INVALID_FRAME, f"{key!r} is not a string")
    return value


def _decode_hello_common(items: Mapping[str, Value]) -> tuple[int, frozenset[str]]:
    size = items.get("max-frame-size")
    if size is None:
        raise SpopError(Status.NO_MAX_FRAME_SIZE, "HELLO has no 'max-frame-size'")
    if type(size) is not int:
        raise SpopError(Status.INVALID_FRAME, "'max-frame-size' is not an integer")
    return size, _split_list(_kv_str(items, "capabilities", Status.NO_CAPABILITIES))


def _decode_haproxy_hello(head: FrameHeader, buf: Buffer) -> HaproxyHello:
    items = decode_kv_list(buf, head.payload_at)
    versions = tuple(sorted(_split_list(_kv_str(items, "supported-versions", Status.NO_VERSION))))
    size, capabilities = _decode_hello_common(items)
    engine_id = items.get("engine-id")
    return HaproxyHello(
        supported_versions=versions,
        max_frame_size=size,
        capabilities=capabilities,
        healthcheck=items.get("healthcheck") is True,
        engine_id=engine_id if type(engine_id) is str else None,
    )


def _decode_agent_hello(head: FrameHeader, buf: Buffer) -> AgentHello:
    items = decode_kv_list(buf, head.payload_at)
    version = _kv_str(items, "version", Status.NO_VERSION)
    size, capabilities = _decode_hello_common(items)
    return AgentHello(version, size, capabilities)


def _decode_disconnect_items(head: FrameHeader, buf: Buffer) -> tuple[int, str]:
    items = decode_kv_list(buf, head.payload_at)
    status = items.get("status-code")
    message = items.get("message")
    if type(status) is not int or type(message) is not str:
        raise SpopError(Status.INVALID_FRAME, "DISCONNECT needs status-code and message")
    return status, message


def _decode_haproxy_disconnect(head: FrameHeader, buf: Buffer) -> HaproxyDisconnect:
    return HaproxyDisconnect(*_decode_disconnect_items(head, buf))


def _decode_agent_disconnect(head: FrameHeader, buf: Buffer) -> AgentDisconnect:
    return AgentDisconnect(*_decode_disconnect_items(head, buf))


def _decode_notify(head: FrameHeader, buf: Buffer) -> Notify:
    return decode_notify(buf, head.payload_at, head.stream_id, head.frame_id)


def decode_notify(buf: Buffer, pos: int, stream_id: int, frame_id: int,
                  schemas: Schemas | None = None) -> Notify:
    """The NOTIFY whose messages start at buf[pos]. A message named in
    `schemas` comes as MessageValues (its arguments in the schema's order),
    any other as a Message."""
    # The hot path of the agent (one call per request): names and strings
    # shorter than 240 bytes, whose length is one byte, NULLs, short BINARY
    # and IPv4 values are read inline; everything else goes through the
    # general decoders. An index past the end is a truncated frame.
    if type(buf) is not bytes:
        buf = bytes(buf)  # its slices are then bytes: hashable, and copied once
    messages: list[Message | MessageValues] = []
    end = len(buf)
    names = _ARG_NAMES
    try:
        while pos < end:
            size = buf[pos]
            schema = None
            if size < _LONG and schemas:
                schema = schemas.get(buf[pos + 1 : pos + 1 + size])
            if schema is None:
                name, pos = decode_str(buf, pos)
                args: dict[str, Value] = {}
            else:
                name, index_of, count = schema
                pos += 1 + size
                values: list[Value] = [None] * count  # an argument not sent is NULL
            nb_args = buf[pos]
            pos += 1
            for _ in range(nb_args):
                size = buf[pos]
                if size < _LONG:
                    pos += 1
                    raw = buf[pos : pos + size]
                    pos += size
                    if pos > end:
                        raise SpopError(Status.INVALID_FRAME, "truncated argument name")
                else:
                    raw, pos = decode_bytes(buf, pos)
                value: Value
                kind = buf[pos]
                if kind in _SIZED and buf[pos + 1] < _LONG:
                    start = pos + 2
                    pos = start + buf[pos + 1]
                    if pos > end:
                        raise SpopError(Status.INVALID_FRAME, "truncated string")
                    # BINARY: headers HAProxy cut with bytes() (credentials), a body.
                    value = buf[start:pos].decode("utf-8", "surrogateescape") \
                        if kind == _STRING else buf[start:pos]
                elif kind == _NULL:
                    value = None
                    pos += 1
                elif kind in _SIZED and buf[pos + 2] < _VARINT_LAST:
                    # A length of two bytes, 240 to 2287: a JWT, a small body.
                    start = pos + 3
                    pos = start + buf[pos + 1] + (buf[pos + 2] << 4)
                    if pos > end:
                        raise SpopError(Status.INVALID_FRAME, "truncated string")
                    value = buf[start:pos].decode("utf-8", "surrogateescape") \
                        if kind == _STRING else buf[start:pos]
                elif kind == _IPV4 and pos + 5 <= end:
                    value = _ipv4(buf[pos + 1 : pos + 5])
                    pos += 5
                else:
                    value, pos = decode_value(buf, pos)
                if schema is None:
                    key = names.get(raw)
                    if key is None:
                        key = str(raw, "utf-8", "surrogateescape")
                        if len(names) < _MAX_ARG_NAMES:
                            names[raw] = key
                    args[key] = value
                else:
                    index = index_of.get(raw)
                    if index is not None:  # an argument the handler does not read is dropped
                        values[index] = value
            messages.append(Message(name, args) if schema is None
                            else MessageValues(name, values))
    except IndexError:
        raise SpopError(Status.INVALID_FRAME, "truncated message") from None
    return Notify(stream_id, frame_id, tuple(messages))


def _decode_scope(value: int) -> Scope:
    try:
        return Scope(value)
    except ValueError:
        raise SpopError(Status.INVALID_FRAME, f"unknown variable scope {value}") from None


def _decode_ack(head: FrameHeader, buf: Buffer) -> Ack:
    actions: list[Action] = []
    pos = head.payload_at
    end = len(buf)
    while pos < end:
        if pos + 3 > end:
            raise SpopError(Status.INVALID_FRAME, "truncated action")
        kind, nb_args, scope = buf[pos], buf[pos + 1], _decode_scope(buf[pos + 2])
        name, pos = decode_str(buf, pos + 3)
        if kind == ActionType.SET_VAR and nb_args == 3:
            value, pos = decode_value(buf, pos)
            actions.append(SetVar(name, value, scope))
        elif kind == ActionType.UNSET_VAR and nb_args == 2:
            actions.append(UnsetVar(name, scope))
        else:
            raise SpopError(Status.INVALID_FRAME, f"unknown action {kind}/{nb_args}")
    return Ack(head.stream_id, head.frame_id, tuple(actions))


DECODERS: Final[dict[int, Callable[[FrameHeader, Buffer], Frame]]] = {
    FrameType.HAPROXY_HELLO: _decode_haproxy_hello,
    FrameType.HAPROXY_DISCONNECT: _decode_haproxy_disconnect,
    FrameType.NOTIFY: _decode_notify,
    FrameType.AGENT_HELLO: _decode_agent_hello,
    FrameType.AGENT_DISCONNECT: _decode_agent_disconnect,
    FrameType.ACK: _decode_ack,
}


def decode_frame(buf: Buffer) -> Frame:
    """One whole frame (no length prefix) of any known type, FIN required."""
    head = decode_header(buf)
    if not head.flags & FrameFlags.FIN:
        raise SpopError(Status.FRAGMENTATION_NOT_SUPPORTED, "fragmented frame")
    decoder = DECODERS.get(head.kind)
    if decoder is None:
        raise SpopError(Status.INVALID_FRAME, f"unknown frame type {head.kind}")
    return decoder(head, buf)
