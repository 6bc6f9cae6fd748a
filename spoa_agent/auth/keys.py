"""The API key format: recognisable, self-checking, with the key id inside.

    spoa_3mZk9QpL0aXc_7fGh...(22 secret chars)...(6 checksum chars)
    |    |            |
    |    |            secret: 22 base62 chars, about 131 bits
    |    key id: 12 base62 chars, the Redis record to look up (O(1))
    prefix (configurable): what secret scanners and people recognise

The checksum (CRC32 of everything before it, in base62) lets a mistyped or
made-up key be refused before any Redis call or hash, as GitHub's tokens do.
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from dataclasses import dataclass

from spoa_agent.reasons import Reason

ALPHABET = string.digits + string.ascii_letters
ID_LENGTH = 12
SECRET_LENGTH = 22  # 62**22 > 2**130
CHECK_LENGTH = 6  # 62**6 > 2**32
PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{0,15}")
_BASE62 = frozenset(ALPHABET)


class KeyFormatError(ValueError):
    """Why a string is not one of our keys: `reason` goes to logs and HAProxy."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECK_LENGTH)


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_key_id() -> str:
    return _random(ID_LENGTH)


def new_secret() -> str:
    return _random(SECRET_LENGTH)


def format_key(prefix: str, key_id: str, secret: str) -> str:
    body = f"{prefix}_{key_id}_{secret}"
    return body + _checksum(body)


def key_length(prefix: str) -> int:
    return len(prefix) + 2 + ID_LENGTH + SECRET_LENGTH + CHECK_LENGTH


def looks_like_key(token: str, prefix: str) -> bool:
    return token.startswith(prefix + "_")


def parse_key(token: str, prefix: str) -> ParsedKey:
    """Split a key into id and secret, or raise KeyFormatError; no I/O."""
    if len(token) != key_length(prefix) or not token.startswith(prefix + "_"):
        raise KeyFormatError(Reason.MALFORMED_KEY)
    id_start = len(prefix) + 1
    secret_start = id_start + ID_LENGTH + 1
    check_start = secret_start + SECRET_LENGTH
    key_id = token[id_start : secret_start - 1]
    if token[secret_start - 1] != "_" or not _BASE62.issuperset(key_id + token[secret_start:]):
        raise KeyFormatError(Reason.MALFORMED_KEY)
    if not secrets.compare_digest(_checksum(token[:check_start]), token[check_start:]):
        raise KeyFormatError(Reason.BAD_CHECKSUM)
    return ParsedKey(key_id, token[secret_start:check_start])


def validate_prefix(prefix: str) -> str:
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"key prefix must match {PREFIX_PATTERN.pattern}, got {prefix!r}")
    return prefix
