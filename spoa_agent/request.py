"""The check-request SPOE message as a typed request, parsed once at the edge.

Nothing after this reads raw SPOP arguments: haproxy/spoe-agent.conf names
them, CheckRequest.from_args() is the one place that knows their types
(HAProxy sends a missing header as NULL, a header cut by `bytes()` as
BINARY, the address as an IP value).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from spoa_agent.auth.authenticator import MAX_CREDENTIAL
from spoa_agent.policy.body import BodyFacts
from spoa_agent.reasons import Reason
from spoa_agent.spop import Value


@dataclass(frozen=True, slots=True)
class CheckRequest:
    ip: str  # HAProxy's `src`, never a header
    method: str
    host: str  # haproxy.cfg's txn.host: lower case, no port
    path: str
    user_agent: str
    credential: str | Reason  # the token, or why there is none usable
    body: BodyFacts

    @classmethod
    def from_args(cls, args: Mapping[str, Value]) -> CheckRequest:
        ip = args.get("ip")
        method = _text(args, "method")
        body = args.get("body")
        length, encoding = _header(args, "content_length"), _header(args, "content_encoding")
        framing = _header(args, "transfer_encoding")
        if body or length is not None or encoding is not None or framing is not None:
            facts = BodyFacts(method, length, framing, encoding,
                              body if isinstance(body, bytes) else b"")
        else:  # most requests: nothing to tell but the method
            facts = _no_body(method)
        return cls("" if ip is None else str(ip), method, _text(args, "host"),
                   _text(args, "path"), _text(args, "user_agent"), credential(args), facts)


@functools.lru_cache(maxsize=64)
def _no_body(method: str) -> BodyFacts:
    return BodyFacts(method, None, None, None, b"")


def credential(args: Mapping[str, Value]) -> str | Reason:
    """The token from `Authorization: Bearer` or `x-api-key`, or why there is none."""
    authorization = _header(args, "authorization")
    api_key = _header(args, "api_key")
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


def _text(args: Mapping[str, Value], key: str) -> str:
    value = args.get(key)
    return value if isinstance(value, str) else ""


def _header(args: Mapping[str, Value], key: str) -> str | None:
    # HAProxy sends NULL for a header the request does not have, and BINARY
    # once the `bytes()` converter has cut it (spoe-agent.conf).
    value = args.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None
