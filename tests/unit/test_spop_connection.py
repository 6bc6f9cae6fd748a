"""The agent-side state machine: HELLO negotiation, limits, and the status
each peer error gets. Table-driven: (what the peer sends, expected status)."""

import pytest

from spoa_agent.spop import (
    CLOSED,
    NEED_DATA,
    Ack,
    AgentConnection,
    AgentDisconnect,
    AgentHello,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SpopError,
    State,
    Status,
    decode_frame,
    encode_frame,
)
from spoa_agent.spop.data import encode_kv_list

HELLO = HaproxyHello(("2.0",), 16380, frozenset({"pipelining", "async"}), False, "e")


def raw_frame(kind: int, payload: bytes, flags: int = 1) -> bytes:
    body = bytes((kind,)) + flags.to_bytes(4, "big") + b"\x00\x00" + payload
    return len(body).to_bytes(4, "big") + body


def hello_with(**items: object) -> bytes:
    return raw_frame(1, encode_kv_list(items.items()))  # type: ignore[arg-type]


def ready() -> AgentConnection:
    conn = AgentConnection()
    conn.receive_data(encode_frame(HELLO))
    assert conn.next_event() == HELLO
    return conn


def test_hello_negotiates_smaller_frame_size_and_pipelining_only() -> None:
    conn = AgentConnection(max_frame_size=4096)
    conn.receive_data(encode_frame(HELLO))
    assert conn.next_event() == HELLO
    reply = conn.hello_reply()
    assert reply == AgentHello("2.0", 4096, frozenset({"pipelining"}))
    assert decode_frame(conn.send(reply)[4:]) == reply
    assert conn.state is State.READY


def test_haproxy_frame_size_wins_when_smaller() -> None:
    conn = AgentConnection()
    conn.receive_data(encode_frame(HaproxyHello(("2.0",), 1024, frozenset())))
    conn.next_event()
    assert conn.hello_reply().max_frame_size == 1024
    assert conn.hello_reply().capabilities == frozenset()


def test_healthcheck_flag() -> None:
    conn = AgentConnection()
    conn.receive_data(encode_frame(HaproxyHello(("2.0",), 16380, frozenset(), True)))
    assert conn.next_event().healthcheck is True  # type: ignore[union-attr]
    assert conn.healthcheck


BAD_PEERS = [
    ("notify before hello", encode_frame(Notify(1, 1, ())), Status.INVALID_FRAME),
    ("no version", hello_with(**{"max-frame-size": 16380, "capabilities": ""}), Status.NO_VERSION),
    ("no frame size", hello_with(**{"supported-versions": "2.0", "capabilities": ""}),
     Status.NO_MAX_FRAME_SIZE),
    ("no capabilities", hello_with(**{"supported-versions": "2.0", "max-frame-size": 16380}),
     Status.NO_CAPABILITIES),
    ("wrong version", encode_frame(HaproxyHello(("1.0", "3.0"), 16380, frozenset())),
     Status.BAD_VERSION),
    ("garbage version", encode_frame(HaproxyHello(("two",), 16380, frozenset())),
     Status.BAD_VERSION),
    ("frame size too small", encode_frame(HaproxyHello(("2.0",), 255, frozenset())),
     Status.BAD_FRAME_SIZE),
    ("oversized length", b"\x7f\xff\xff\xff", Status.FRAME_TOO_BIG),
    ("fragmented hello", raw_frame(1, b"", flags=0), Status.FRAGMENTATION_NOT_SUPPORTED),
    ("garbage", b"\x00\x00\x00\x05GET /", Status.INVALID_FRAME),
    ("frame shorter than header", b"\x00\x00\x00\x02\x01\x00", Status.INVALID_FRAME),
]


BAD_AFTER_HELLO = [
    ("second hello", encode_frame(HELLO), Status.INVALID_FRAME),
    ("agent frame from haproxy", encode_frame(Ack(1, 1)), Status.INVALID_FRAME),
    ("notify without FIN", raw_frame(3, b"", flags=0), Status.FRAGMENTATION_NOT_SUPPORTED),
    ("continuation frame", raw_frame(0, b""), Status.FRAGMENTATION_NOT_SUPPORTED),
    ("oversized notify", (16381).to_bytes(4, "big"), Status.FRAME_TOO_BIG),
    ("truncated message", raw_frame(3, b"\x05che"), Status.INVALID_FRAME),
]


CASES = [(*case, False) for case in BAD_PEERS] + [(*case, True) for case in BAD_AFTER_HELLO]


@pytest.mark.parametrize(("name", "data", "status", "after_hello"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_peer_gets_status(name: str, data: bytes, status: Status, after_hello: bool) -> None:
    conn = ready() if after_hello else AgentConnection()
    conn.receive_data(data)
    with pytest.raises(SpopError) as err:
        conn.next_event()
    assert err.value.status is status


def test_frames_fed_one_byte_at_a_time() -> None:
    notify = Notify(3, 9, (Message("check-request", {"path": "/api/tags"}),))
    data = encode_frame(HELLO) + encode_frame(notify)
    conn = AgentConnection()
    events = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [HELLO, notify]
    assert conn.buffered == 0


def test_pipelined_frames_in_one_chunk() -> None:
    notifies = [Notify(i, 1, (Message("m", {"i": i}),)) for i in range(50)]
    conn = ready()
    conn.receive_data(b"".join(encode_frame(n) for n in notifies))
    assert [conn.next_event() for _ in notifies] == notifies
    assert conn.next_event() is NEED_DATA


def test_empty_notify_is_an_event() -> None:
    conn = ready()
    conn.receive_data(encode_frame(Notify(1, 1, ())))
    assert conn.next_event() == Notify(1, 1, ())


def test_unknown_frame_type_is_skipped() -> None:
    conn = ready()
    conn.receive_data(raw_frame(50, b"whatever") + encode_frame(Notify(1, 1, ())))
    assert conn.next_event() == Notify(1, 1, ())


def test_disconnect_and_eof() -> None:
    conn = ready()
    conn.receive_data(encode_frame(HaproxyDisconnect(0, "bye")))
    assert conn.next_event() == HaproxyDisconnect(0, "bye")
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_eof_mid_frame_is_a_close() -> None:
    conn = ready()
    conn.receive_data(encode_frame(Notify(1, 1, ()))[:5])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_ack_over_negotiated_size_is_refused_by_send() -> None:
    conn = AgentConnection(max_frame_size=256)
    conn.receive_data(encode_frame(HELLO))
    conn.next_event()
    from spoa_agent.spop import SetVar

    with pytest.raises(ValueError):
        conn.send(Ack(1, 1, (SetVar("x", "y" * 300),)))


def test_sending_disconnect_closes() -> None:
    conn = ready()
    conn.send(AgentDisconnect(0, "bye"))
    conn.receive_data(encode_frame(Notify(1, 1, ())))
    assert conn.next_event() is CLOSED
