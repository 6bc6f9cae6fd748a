"""Redis clients from a URL, for the agent (asyncio) and the CLI (blocking)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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


# How long a call may wait for a free pooled connection. This is our own
# queueing, not Redis being slow, so it is not held to the Redis timeout.
POOL_WAIT = 1.0


def async_client(url: str, timeout: float | None = DEFAULT_TIMEOUT) -> redis.asyncio.Redis:
    """`timeout` bounds connecting to and each read from Redis (None for a pub/sub
    subscriber, which waits on a quiet channel)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, socket_timeout=timeout,
        socket_connect_timeout=timeout or DEFAULT_TIMEOUT, decode_responses=True,
        # After Redis restarts every pooled connection is dead: retry once, at
        # once, on a new one, instead of failing a request per stale connection.
        # Timeouts are not retried: they would double the time a request waits.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    return redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it


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
