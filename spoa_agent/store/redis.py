"""Redis clients from a URL, for the agent (asyncio) and the CLI (blocking)."""

from __future__ import annotations

import asyncio
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


# Connections per client and process. A burst of requests queues for one of
# these (each call takes well under a millisecond) instead of opening a
# connection per request, which under load takes longer than the timeout.
POOL_SIZE = 32


def async_client(url: str, timeout: float | None = DEFAULT_TIMEOUT) -> redis.asyncio.Redis:
    """timeout=None for a pub/sub subscriber, which waits on a quiet channel."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout or DEFAULT_TIMEOUT, decode_responses=True,
        # No CLIENT SETINFO round trips on every new connection.
        lib_name=None, lib_version=None,
    )
    return redis.asyncio.Redis(connection_pool=pool)


async def warm_up(client: redis.asyncio.Redis, connections: int = 8) -> bool:
    """Open some pooled connections now rather than during the first burst of
    requests; False (and nothing else) when Redis is not reachable yet."""
    try:
        await asyncio.gather(*(client.ping() for _ in range(connections)))
    except (redis.RedisError, OSError, TimeoutError):
        return False
    return True


def sync_client(url: str, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
    )
