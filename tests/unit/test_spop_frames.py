"""Every frame type encodes and decodes back to itself; byte layout checked."""

from ipaddress import IPv4Address

import pytest

from spoa_agent.spop import (
    Ack,
    AgentDisconnect,
    AgentHello,
    Frame,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    Scope,
    SetVar,
    SpopError,
    Status,
    UnsetVar,
    decode_frame,
    encode_frame,
)

FRAMES: list[Frame] = [
    HaproxyHello(("2.0",), 16380, frozenset({"pipelining", "async"}), False, "engine-1"),
    HaproxyHello(("2.0",), 16380, frozenset(), True, None),
    AgentHello("2.0", 16380, frozenset({"pipelining"})),
    HaproxyDisconnect(0, "normal"),
    AgentDisconnect(3, "frame is too big"),
    Notify(7, 1, ()),
    Notify(16380, 2**40, (
        Message("check-request", {"ip": IPv4Address("127.0.0.1"), "method": "GET",
                                  "path": "/api/tags", "n": -5, "raw": b"\x00"}),
        Message("other", {}),
    )),
    # The short forms read inline and the long ones read by the general decoders.
    Notify(9, 3, (Message("check-request", {
        "authorization": b"Bearer " + b"k" * 232, "long": b"b" * 240, "body": b"",
        "ip": IPv4Address("192.0.2.1"), "text": "t" * 239, "longer": "t" * 240}),)),
    # Lengths of two bytes (240 to 2287: a JWT) read inline too, three by the decoders.
    Notify(13, 1, (Message("check-request", {
        "authorization": b"Bearer " + b"j" * 600, "text": "t" * 2287, "body": b"b" * 2288}),)),
    # Values of one byte, without a length after their type, end the frame.
    Notify(10, 1, (Message("check-request", {"ip": IPv4Address("192.0.2.1"), "ok": True}),)),
    Notify(11, 1, (Message("check-request", {"empty": "", "off": False}),)),
    Notify(12, 1, (Message("a", {"none": None}), Message("b", {"x": "y", "z": b"",
                                                                "t": True}))),
    Ack(7, 1, ()),
    Ack(1, 2, (SetVar("decision", "allow"), SetVar("status", 200, Scope.REQUEST),
               UnsetVar("reason", Scope.SESSION), SetVar("flag", True))),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode_frame(data[4:]) == frame


def test_ack_layout() -> None:
    data = encode_frame(Ack(1, 2, (SetVar("a", 1),)))
    # length, type 103, flags FIN, stream 1, frame 2, SET-VAR nb-args=3 scope txn,
    # name "a", UINT32 1
    assert data.hex() == "0000000e" "67" "00000001" "01" "02" "01" "03" "02" "0161" "0301"


def test_notify_layout() -> None:
    data = encode_frame(Notify(1, 1, (Message("m", {"k": "v"}),)))
    assert data[4:].hex() == "03" "00000001" "01" "01" "016d" "01" "016b" "080176"


def test_fragment_is_refused() -> None:
    data = bytearray(encode_frame(Notify(1, 1, ())))
    data[8] = 0  # clear FIN
    with pytest.raises(SpopError) as err:
        decode_frame(bytes(data[4:]))
    assert err.value.status is Status.FRAGMENTATION_NOT_SUPPORTED


@pytest.mark.parametrize("kind", [0x00, 0x04, 0x64, 0xFF])
def test_unknown_type_is_invalid(kind: int) -> None:
    body = bytes((kind,)) + b"\x00\x00\x00\x01\x00\x00"
    with pytest.raises(SpopError):
        decode_frame(body)


def test_variable_needs_a_name() -> None:
    with pytest.raises(ValueError):
        SetVar("", 1)


def test_equal_values_of_different_types_keep_their_types() -> None:
    # True == 1 and hash(True) == hash(1): the encoding cache must not mix them.
    for value in (1, True, 0, False):
        ack = Ack(1, 1, (SetVar("v", value),))
        decoded = decode_frame(encode_frame(ack)[4:])
        assert isinstance(decoded, Ack)
        got = decoded.actions[0]
        assert isinstance(got, SetVar)
        assert type(got.value) is type(value) and got.value == value


@pytest.mark.parametrize("value", [b"\x09\x05abc", b"\x06\x7f\x00", b"\x08\xf0\x10abc",
                                   b"\x09\xf0"])
def test_a_short_value_cut_short_is_an_invalid_frame(value: bytes) -> None:
    # A BINARY of 5 bytes with 3 left, an IPv4 address with 2 of its 4 bytes,
    # a STRING of 496 bytes (a two-byte length) with 3 left, a BINARY whose
    # two-byte length is cut.
    frame = encode_frame(Notify(1, 1, (Message("m", {"a": None}),)))
    cut = frame[4:-1] + value  # the NULL replaced by the truncated value
    with pytest.raises(SpopError) as err:
        decode_frame(cut)
    assert err.value.status == Status.INVALID_FRAME
