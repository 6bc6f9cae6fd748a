"""The check-request SPOE message as a typed request, parsed once at the edge.

Nothing after this reads raw SPOP arguments: haproxy/spoe-agent.conf names
them (ARGS), CheckRequest.from_values() is the one place that knows their
types (HAProxy sends a missing header as NULL, a header cut by `bytes()` as
BINARY, the address as an IP value).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Final

from spoa_agent.auth.authenticator import MAX_CREDENTIAL
from spoa_agent.auth.devices import FINGERPRINT
from spoa_agent.policy.body import BodyFacts
from spoa_agent.reasons import Reason
from spoa_agent.record import Record
from spoa_agent.spop import Value

# The check-request message's arguments (spoe-agent.conf), in the order
# from_values() reads them: the codec decodes them straight into this order.
ARGS: Final = ("ip", "method", "host", "path", "user_agent", "authorization", "api_key",
        "content_length", "transfer_encoding", "content_encoding", "body", "device")


class CheckRequest(Record):
    """The check-request message, typed."""

    __slots__ = ("api_key", "authorization", "body", "device", "host", "ip", "method", "path",
                 "user_agent")

    def __init__(self, ip: str, method: str, host: str, path: str, user_agent: str,
                 authorization: str | None, api_key: str | None, body: BodyFacts,
                 device: str | None = None) -> None:
        self.ip = ip  # HAProxy's `src`, never a header
        self.method = method
        self.host = host  # haproxy.cfg's txn.host: lower case, no port
        self.path = path
        self.user_agent = user_agent
        # The headers, as sent (cut at MAX_CREDENTIAL + 1).
        self.authorization = authorization
        self.api_key = api_key
        self.body = body
        # The SHA-256 of the client's certificate, lower-case hex, sent by HAProxy
        # only when it verified the certificate (haproxy.cfg's txn.device).
        self.device = device

    def _fields(self) -> tuple[object, ...]:
        return (self.ip, self.method, self.host, self.path, self.user_agent, self.authorization,
                self.api_key, self.body, self.device)

    @property
    def credential(self) -> str | Reason:
        """The token, or why there is none usable (read only where a key is asked for)."""
        return credential(self.authorization, self.api_key)

    @classmethod
    def from_args(cls, args: Mapping[str, Value]) -> CheckRequest:
        """From the arguments by name (tests, `spoa-agent check`)."""
        return cls.from_values([args.get(name) for name in ARGS])

    @classmethod
    def from_values(cls, values: Sequence[Value]) -> CheckRequest:
        """From the values of ARGS, in that order (None: not sent)."""
        ip, method, host, path, agent, authorization, api_key, length, framing, encoding, \
            body, device = values
        method = method if type(method) is str else ""
        # Most requests send none of the body's headers: no call for those.
        length = None if length is None else _header(length)
        framing = None if framing is None else _header(framing)
        encoding = None if encoding is None else _header(encoding)
        if body or length is not None or encoding is not None or framing is not None:
            facts = BodyFacts(method, length, framing, encoding,
                              body if type(body) is bytes else b"")
        else:  # most requests: nothing to tell but the method
            facts = _no_body(method)
        if ip is None:
            address = ""
        else:
            known = _ADDRESSES.get(id(ip))
            address = known[1] if known is not None and known[0] is ip else _address_text(ip)
        # The credential headers come as BINARY (cut by bytes()): decoded
        # here rather than in a call to _header().
        if type(authorization) is bytes:
            authorization = authorization.decode("utf-8", "surrogateescape")
        elif authorization is not None:
            authorization = _header(authorization)
        return cls(address, method, host if type(host) is str else "",
                   path if type(path) is str else "", agent if type(agent) is str else "",
                   authorization, None if api_key is None else _header(api_key), facts,
                   None if device is None else _fingerprint(device))


# Formatting an address costs more than looking it up: the same clients come
# back, and the codec hands out one object per address (from its own cache),
# so the text is found by the object's identity: an int key, where hashing
# an address is a Python call. Each entry holds its address, so no other
# object can take its id while the entry exists.
_ADDRESSES: Final[dict[int, tuple[Value, str]]] = {}
_MAX_ADDRESSES = 65536


def _address_text(ip: Value) -> str:
    if len(_ADDRESSES) >= _MAX_ADDRESSES:
        _ADDRESSES.clear()
    text = str(ip)
    _ADDRESSES[id(ip)] = (ip, text)
    return text


@functools.lru_cache(maxsize=64)
def _no_body(method: str) -> BodyFacts:
    return BodyFacts(method, None, None, None, b"")


def credential(authorization: str | None, api_key: str | None) -> str | Reason:
    """The token from `Authorization: Bearer` or `x-api-key`, or why there is none."""
    raw = authorization if authorization is not None else api_key
    if raw is None:
        return Reason.MISSING_CREDENTIAL
    if len(raw) > MAX_CREDENTIAL:  # HAProxy cut it at MAX_CREDENTIAL + 1
        return Reason.OVERSIZED_CREDENTIAL
    token = raw.strip()
    if authorization is not None:
        scheme, _, token = token.partition(" ")
        if scheme.lower() != "bearer":
            return Reason.MALFORMED_CREDENTIAL
    return token.strip() or Reason.MALFORMED_CREDENTIAL


def _fingerprint(value: Value) -> str | None:
    # HAProxy's `hex` is upper case; anything but 64 hex digits is no
    # certificate (HAProxy never sends one).
    if type(value) is not str or len(value) != 64:
        return None
    fingerprint = value.lower()
    return fingerprint if FINGERPRINT.fullmatch(fingerprint) else None


def _header(value: Value) -> str | None:
    # HAProxy sends NULL for a header the request does not have, and BINARY
    # once the `bytes()` converter has cut it (spoe-agent.conf).
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    return None
