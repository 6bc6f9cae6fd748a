"""What a request body says, read once, strictly, from the bytes HAProxy
forwards. Pure, no I/O.

The agent decides on a body only when it holds the body whole and every
reader downstream would read it the same way. HAProxy's `json_query` takes
the first of two `model` keys, Python servers the last, Go's encoding/json
(Ollama) the last and matches key names case-insensitively (with Unicode
folding: `MODEL`, `Model`, `mod\\u0065l` all name the same field). So a
body whose top-level object names a model field more than once, in any
spelling, is refused as ambiguous rather than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from spoa_agent.reasons import Reason

# Methods whose requests carry a body (RFC 9110 gives the others none).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class BodyFacts:
    """The body as HAProxy saw it (spoe-agent.conf's arguments)."""

    method: str
    content_length: str | None  # the header, as sent (HAProxy refuses differing copies)
    transfer_encoding: str | None
    content_encoding: str | None
    body: bytes  # what HAProxy buffered, maybe cut

    def length(self) -> int | Reason:
        """The body's exact length, or why it is not known before it arrives.

        Only Content-Length says it: a chunked HTTP/1.1 body, or an HTTP/2
        one without the header, may be of any size.
        """
        if self.content_encoding and self.content_encoding.strip().lower() != "identity":
            return Reason.ENCODED_BODY  # the upstream may read other bytes than these
        if self.content_length is None:
            if self.transfer_encoding or self.body or self.method in BODY_METHODS:
                return Reason.LENGTH_REQUIRED
            return 0
        text = self.content_length.strip()
        if not text.isdigit() or not text.isascii():
            return Reason.LENGTH_REQUIRED  # HAProxy refuses these; never guess
        return int(text)

    def whole(self) -> bytes | Reason:
        """The whole body, or why the agent cannot read it whole."""
        length = self.length()
        if isinstance(length, Reason):
            return length
        if length != len(self.body):
            # Larger than HAProxy's buffer (or the frame to the agent).
            return Reason.BODY_TOO_LARGE_FOR_MODEL_CHECK
        return self.body


def model_of(body: bytes) -> str | Reason:
    """The top-level `"model"` of a JSON body, if every reader agrees on it."""
    try:
        # UTF-8 only, strictly, as Go and the JSON RFC read it (json.loads
        # on bytes would guess UTF-16 or UTF-32 too).
        parsed = json.loads(body.decode("utf-8"), object_pairs_hook=_pairs)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return Reason.AMBIGUOUS_BODY
    if not isinstance(parsed, _Pairs):
        return Reason.AMBIGUOUS_BODY
    found = [(key, value) for key, value in parsed if key.casefold() == "model"]
    if not found:
        return Reason.MODEL_MISSING
    if len(found) > 1 or found[0][0] != "model":
        return Reason.AMBIGUOUS_BODY
    value = found[0][1]
    if not isinstance(value, str) or not value:
        return Reason.MODEL_MISSING if value in ("", None) else Reason.AMBIGUOUS_BODY
    return value


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its key/value pairs, duplicates kept."""


def _pairs(pairs: list[tuple[str, object]]) -> _Pairs:
    return _Pairs(pairs)
