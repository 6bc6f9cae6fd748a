"""Random bytes into the decoder: only events, markers or SpopError come out,
and the buffer never holds more than one frame plus the last chunk."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoa_agent.spop import (
    NEED_DATA,
    AgentConnection,
    HaproxyHello,
    Message,
    MessageValues,
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


# Differential: a message decoded against a schema (MessageValues) carries
# exactly what the same message decoded by name gives for those names.
SCHEMA = ("ip", "path", "authorization", "body")
ARG_VALUES = st.one_of(st.none(), st.text(max_size=260), st.binary(max_size=260),
                       st.integers(-(2**63), 2**63 - 1), st.booleans())


def both_ways(frame: bytes) -> tuple[object, object]:
    """What a connection with the schema and one without make of `frame`."""
    results = []
    for schemas in ({"check-request": SCHEMA}, None):
        conn = AgentConnection(FRAME_SIZE * 4, schemas=schemas)
        conn.receive_data(HELLO)
        conn.next_event()
        conn.receive_data(frame)
        try:
            results.append(conn.next_event())
        except SpopError as err:
            results.append(err.status)
    return results[0], results[1]


def agree(with_schema: object, by_name: object) -> None:
    if not isinstance(by_name, Notify):
        assert with_schema == by_name  # the same status, or the same marker
        return
    assert isinstance(with_schema, Notify)
    assert (with_schema.stream_id, with_schema.frame_id) == (by_name.stream_id, by_name.frame_id)
    assert len(with_schema.messages) == len(by_name.messages)
    for positional, named in zip(with_schema.messages, by_name.messages, strict=True):
        assert isinstance(named, Message)
        if named.name == "check-request":
            assert isinstance(positional, MessageValues)
            assert positional.values == [named.args.get(arg) for arg in SCHEMA]
        else:
            assert positional == named


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["check-request", "other"]),
                          st.dictionaries(st.sampled_from([*SCHEMA, "extra", "x" * 250]),
                                          ARG_VALUES, max_size=6)), max_size=3),
       st.integers(0, 300), st.integers(0, 300))
def test_schema_decoding_agrees_with_names(messages: list[tuple[str, dict[str, object]]],
                                           stream_id: int, frame_id: int) -> None:
    notify = Notify(stream_id, frame_id, tuple(Message(name, args)  # type: ignore[arg-type]
                                               for name, args in messages))
    agree(*both_ways(encode_frame(notify)))


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 200), st.integers(0, 255))
def test_schema_decoding_agrees_on_mutated_frames(payload: bytes, position: int,
                                                  byte: int) -> None:
    frame = bytearray(encode_frame(Notify(1, 1, (Message("check-request", {"body": payload}),))))
    frame[min(position, len(frame) - 1)] = byte
    agree(*both_ways(bytes(frame)))
