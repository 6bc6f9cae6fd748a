"""Varints and typed data: vectors from SPOE.txt, round trips, and errors."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoa_agent.spop import (
    SpopError,
    Status,
    decode_value,
    decode_varint,
    encode_value,
    encode_varint,
)

VARINTS = [
    (0, "00"),
    (1, "01"),
    (239, "ef"),
    (240, "f000"),
    (2287, "ff7f"),
    (2288, "f08000"),
    (16380, "fcf006"),  # HAProxy's default max-frame-size
    (264431, "ffff7f"),
    (264432, "f0808000"),
    (33818863, "ffffff7f"),
    (33818864, "f080808000"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), VARINTS)
def test_varint_vectors(value: int, hex_bytes: str) -> None:
    assert encode_varint(value).hex() == hex_bytes
    assert decode_varint(bytes.fromhex(hex_bytes), 0) == (value, len(hex_bytes) // 2)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data + b"\x99", 0) == (value, len(data))


@pytest.mark.parametrize("hex_bytes", ["", "f0", "ff80", "f0808080"])
def test_truncated_varint_is_invalid_frame(hex_bytes: str) -> None:
    with pytest.raises(SpopError) as err:
        decode_varint(bytes.fromhex(hex_bytes), 0)
    assert err.value.status is Status.INVALID_FRAME


def test_varint_over_64_bits_is_refused() -> None:
    with pytest.raises(SpopError):
        decode_varint(bytes.fromhex("ff" + "ff" * 10 + "7f"), 0)


TYPED = [
    (None, "00"),
    (True, "11"),
    (False, "01"),
    (5, "0305"),
    (-1, "02" + encode_varint(0xFFFFFFFF).hex()),
    (-(2**40), "04" + encode_varint(2**64 - 2**40).hex()),
    (2**40, "05" + encode_varint(2**40).hex()),
    ("GET", "0803474554"),
    (b"\x00\xff", "090200ff"),
    (IPv4Address("127.0.0.2"), "067f000002"),
    (IPv6Address("::1"), "07" + "00" * 15 + "01"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), TYPED)
def test_typed_data_vectors(value: object, hex_bytes: str) -> None:
    assert encode_value(value).hex() == hex_bytes  # type: ignore[arg-type]
    assert decode_value(bytes.fromhex(hex_bytes), 0) == (value, len(hex_bytes) // 2)


def test_signed_types_decode_twos_complement() -> None:
    assert decode_value(bytes.fromhex("02") + encode_varint(0xFFFFFFFE), 0)[0] == -2
    assert decode_value(bytes.fromhex("04") + encode_varint(2**64 - 3), 0)[0] == -3


def test_invalid_utf8_string_is_kept_byte_for_byte() -> None:
    value, _ = decode_value(bytes.fromhex("0803") + b"/\xff\xfe", 0)
    assert isinstance(value, str)
    assert encode_value(value) == bytes.fromhex("0803") + b"/\xff\xfe"


@pytest.mark.parametrize("hex_bytes", ["08", "0805aa", "06010203", "0700", "0a", "0f"])
def test_bad_typed_data_is_invalid_frame(hex_bytes: str) -> None:
    with pytest.raises(SpopError) as err:
        decode_value(bytes.fromhex(hex_bytes), 0)
    assert err.value.status is Status.INVALID_FRAME


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 1.5, object()])
def test_unencodable_values_raise(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode_value(value)  # type: ignore[arg-type]
