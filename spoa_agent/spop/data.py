"""SPOP's wire encodings: varints, typed data and KV lists (SPOE.txt 3.1, 3.2).

Decoders take a buffer and an offset and return (value, new offset), so a frame
is parsed without copying; they raise SpopError(INVALID_FRAME) on bytes that
end early or make no sense, never another exception.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from spoa_agent.spop.constants import DataType, Status
from spoa_agent.spop.errors import SpopError

Value = None | bool | int | str | bytes | IPv4Address | IPv6Address
Buffer = bytes | bytearray | memoryview

_UINT64_MAX: Final = (1 << 64) - 1
# A uint64 needs at most 10 varint bytes: 4 bits, then 7 bits per byte.
_MAX_VARINT_BYTES: Final = 10


def _truncated(what: str) -> SpopError:
    return SpopError(Status.INVALID_FRAME, f"truncated {what}")


def encode_varint(value: int) -> bytes:
    """HAProxy's "peers" varint: 16380 -> FC F0 06."""
    if value < 0 or value > _UINT64_MAX:
        raise ValueError(f"varint out of range: {value}")
    if value < 240:
        return bytes((value,))
    out = bytearray(((value & 0xFF) | 0xF0,))
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value & 0xFF) | 0x80)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    try:
        value = buf[pos]
    except IndexError:
        raise _truncated("varint") from None
    pos += 1
    if value < 240:
        return value, pos
    shift = 4
    for _ in range(_MAX_VARINT_BYTES - 1):
        try:
            byte = buf[pos]
        except IndexError:
            raise _truncated("varint") from None
        pos += 1
        value += byte << shift
        if byte < 128:
            if value > _UINT64_MAX:
                break
            return value, pos
        shift += 7
    raise SpopError(Status.INVALID_FRAME, "varint longer than 64 bits")


def encode_string(raw: bytes) -> bytes:
    return encode_varint(len(raw)) + raw


def decode_bytes(buf: Buffer, pos: int) -> tuple[bytes, int]:
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise _truncated("string")
    return bytes(buf[pos:end]), end


def decode_str(buf: Buffer, pos: int) -> tuple[str, int]:
    raw, pos = decode_bytes(buf, pos)
    # surrogateescape keeps every byte: two different paths on the wire never
    # decode to the same str, so a policy cannot be fooled by lossy decoding.
    return raw.decode("utf-8", "surrogateescape"), pos


def encode_str(text: str) -> bytes:
    return encode_string(text.encode("utf-8", "surrogateescape"))


def _signed(value: int, bits: int) -> int:
    # HAProxy writes signed integers as the varint of their two's complement.
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def encode_value(value: Value) -> bytes:
    """Typed data for a Python value. ints take the narrowest SPOP type."""
    if value is None:
        return b"\x00"
    if value is True:
        return bytes((DataType.BOOL | 0x10,))
    if value is False:
        return bytes((DataType.BOOL,))
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return bytes((DataType.UINT32,)) + encode_varint(value)
        if -(1 << 31) <= value < 0:
            return bytes((DataType.INT32,)) + encode_varint(value & 0xFFFFFFFF)
        if -(1 << 63) <= value < 0:
            return bytes((DataType.INT64,)) + encode_varint(value & _UINT64_MAX)
        if 0 <= value <= _UINT64_MAX:
            return bytes((DataType.UINT64,)) + encode_varint(value)
        raise ValueError(f"integer out of SPOP range: {value}")
    if isinstance(value, str):
        return bytes((DataType.STRING,)) + encode_str(value)
    if isinstance(value, bytes | bytearray):
        return bytes((DataType.BINARY,)) + encode_string(bytes(value))
    if isinstance(value, IPv4Address):
        return bytes((DataType.IPV4,)) + value.packed
    if isinstance(value, IPv6Address):
        return bytes((DataType.IPV6,)) + value.packed
    raise TypeError(f"cannot encode {type(value).__name__} as SPOP typed data")


def decode_value(buf: Buffer, pos: int) -> tuple[Value, int]:
    try:
        type_byte = buf[pos]
    except IndexError:
        raise _truncated("typed data") from None
    pos += 1
    kind = type_byte & 0x0F
    if kind == DataType.STRING:
        return decode_str(buf, pos)
    if kind == DataType.NULL:
        return None, pos
    if kind == DataType.BOOL:
        return bool(type_byte & 0x10), pos
    if kind == DataType.UINT32 or kind == DataType.UINT64:
        return decode_varint(buf, pos)
    if kind == DataType.INT32:
        raw, pos = decode_varint(buf, pos)
        return _signed(raw, 32), pos
    if kind == DataType.INT64:
        raw, pos = decode_varint(buf, pos)
        return _signed(raw, 64), pos
    if kind == DataType.BINARY:
        return decode_bytes(buf, pos)
    if kind == DataType.IPV4:
        if pos + 4 > len(buf):
            raise _truncated("IPv4 address")
        return IPv4Address(bytes(buf[pos : pos + 4])), pos + 4
    if kind == DataType.IPV6:
        if pos + 16 > len(buf):
            raise _truncated("IPv6 address")
        return IPv6Address(bytes(buf[pos : pos + 16])), pos + 16
    raise SpopError(Status.INVALID_FRAME, f"unknown data type {kind}")


def encode_kv_list(items: Iterable[tuple[str, Value]]) -> bytes:
    return b"".join(encode_str(key) + encode_value(value) for key, value in items)


def decode_kv_list(buf: Buffer, pos: int) -> dict[str, Value]:
    """A KV list runs to the end of the frame."""
    items: dict[str, Value] = {}
    end = len(buf)
    while pos < end:
        key, pos = decode_str(buf, pos)
        items[key], pos = decode_value(buf, pos)
    return items


FRAME_HEADER: Final = struct.Struct(">BI")  # type, flags (after the 4-byte length)
LENGTH: Final = struct.Struct(">I")
