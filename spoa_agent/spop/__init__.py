"""Sans-IO codec of SPOP 2.0, the protocol of HAProxy's SPOE filter."""

from spoa_agent.spop.connection import CLOSED, NEED_DATA, AgentConnection, Closed, NeedData, State
from spoa_agent.spop.constants import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    SPOP_VERSION,
    DataType,
    FrameFlags,
    FrameType,
    Scope,
    Status,
)
from spoa_agent.spop.data import Value, decode_value, decode_varint, encode_value, encode_varint
from spoa_agent.spop.errors import SpopError
from spoa_agent.spop.frames import (
    Ack,
    Action,
    AgentDisconnect,
    AgentHello,
    Encoded,
    Frame,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    MessageValues,
    Notify,
    SetVar,
    UnsetVar,
    decode_frame,
    encode_frame,
)

__all__ = [
    "CLOSED", "DEFAULT_MAX_FRAME_SIZE", "MIN_FRAME_SIZE", "NEED_DATA", "SPOP_VERSION",
    "Ack", "Action", "AgentConnection", "AgentDisconnect", "AgentHello", "Closed",
    "DataType", "Encoded", "Frame", "FrameFlags", "FrameType", "HaproxyDisconnect", "HaproxyHello",
    "Message", "MessageValues", "NeedData", "Notify", "Scope", "SetVar", "SpopError", "State",
    "Status", "UnsetVar", "Value", "decode_frame", "decode_value", "decode_varint", "encode_frame",
    "encode_value", "encode_varint",
]
