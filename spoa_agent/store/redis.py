"""Redis clients from a URL, for the agent (asyncio) and the CLI (blocking)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Redis on the request path answers in well under a millisecond; past this the
# request is not kept waiting (the policy decides open or closed).
DEFAULT_TIMEOUT = 0.25


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def async_client(url: str, timeout: float | None = DEFAULT_TIMEOUT) -> redis.asyncio.Redis:
    """timeout=None for a pub/sub subscriber, which waits on a quiet channel."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout or DEFAULT_TIMEOUT,
        decode_responses=True,
    )


def sync_client(url: str, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
    )
