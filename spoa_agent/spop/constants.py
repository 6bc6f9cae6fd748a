"""Numbers of SPOP 2.0 (HAProxy doc/SPOE.txt, section 3): frame types, flags,
data types, variable scopes and the status codes of a DISCONNECT."""

from __future__ import annotations

from enum import IntEnum, IntFlag

SPOP_VERSION = "2.0"
# SPOE.txt 3.2: "The maximum size supported by peers for a frame must be
# greater than or equal to 256 bytes."
MIN_FRAME_SIZE = 256
# HAProxy's own default is tune.bufsize - 4 = 16380; a frame never needs more
# unless the operator raises tune.bufsize to send large bodies.
DEFAULT_MAX_FRAME_SIZE = 16380


class FrameType(IntEnum):
    UNSET = 0  # continuation of a fragmented payload
    HAPROXY_HELLO = 1
    HAPROXY_DISCONNECT = 2
    NOTIFY = 3
    AGENT_HELLO = 101
    AGENT_DISCONNECT = 102
    ACK = 103


class FrameFlags(IntFlag):
    FIN = 0x1
    ABORT = 0x2


class DataType(IntEnum):
    NULL = 0
    BOOL = 1
    INT32 = 2
    UINT32 = 3
    INT64 = 4
    UINT64 = 5
    IPV4 = 6
    IPV6 = 7
    STRING = 8
    BINARY = 9


class Scope(IntEnum):
    """Where HAProxy stores a variable the agent sets (proc, sess, txn, req, res)."""

    PROCESS = 0
    SESSION = 1
    TRANSACTION = 2
    REQUEST = 3
    RESPONSE = 4


class ActionType(IntEnum):
    SET_VAR = 1
    UNSET_VAR = 2


class Status(IntEnum):
    """Status codes of HAPROXY-DISCONNECT / AGENT-DISCONNECT (SPOE.txt 3.5)."""

    NORMAL = 0
    IO_ERROR = 1
    TIMEOUT = 2
    FRAME_TOO_BIG = 3
    INVALID_FRAME = 4
    NO_VERSION = 5
    NO_MAX_FRAME_SIZE = 6
    NO_CAPABILITIES = 7
    BAD_VERSION = 8
    BAD_FRAME_SIZE = 9
    FRAGMENTATION_NOT_SUPPORTED = 10
    INTERLACED_FRAMES = 11
    FRAME_ID_NOT_FOUND = 12
    RESOURCE_ALLOCATION = 13
    UNKNOWN = 99
