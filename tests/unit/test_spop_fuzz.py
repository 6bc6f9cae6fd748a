"""Random bytes into the decoder: only events, markers or SpopError come out,
and the buffer never holds more than one frame plus the last chunk."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoa_agent.spop import (
    NEED_DATA,
    AgentConnection,
    HaproxyHello,
    Message,
    Notify,
    SpopError,
    encode_frame,
)
from spoa_agent.spop.connection import Closed

HELLO = encode_frame(HaproxyHello(("2.0",), 1024, frozenset({"pipelining"})))
FRAME_SIZE = 1024


def feed(conn: AgentConnection, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn.receive_data(chunk)
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, Closed):
                    break
        except SpopError:
            return
        # Whatever stays buffered is under one frame plus one chunk.
        assert conn.buffered <= FRAME_SIZE + 4 + len(chunk)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_before_hello(chunks: list[bytes]) -> None:
    feed(AgentConnection(FRAME_SIZE), chunks)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_after_hello(chunks: list[bytes]) -> None:
    feed(AgentConnection(FRAME_SIZE), [HELLO, *chunks])


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 200), st.integers(0, 255))
def test_mutated_valid_notify(payload: bytes, position: int, byte: int) -> None:
    frame = bytearray(encode_frame(Notify(1, 1, (Message("check-request", {"p": payload}),))))
    frame[min(position, len(frame) - 1)] = byte
    feed(AgentConnection(FRAME_SIZE), [HELLO, bytes(frame)])
