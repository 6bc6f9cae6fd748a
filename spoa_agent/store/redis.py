"""Redis clients from a URL, for the agent (asyncio) and the CLI (blocking).

    redis://[:password@]host:port/db          standalone (rediss:// for TLS)
    unix:///run/redis.sock?db=0               standalone over a socket
    redis+sentinel://host:26379,host2:26379/mymaster/0   Sentinel (rediss+sentinel://)
    redis+cluster://host:7000,host2:7001      Cluster (rediss+cluster://)

A password in the URL, or `[redis] password` / SPOA_AGENT_REDIS_PASSWORD.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Redis on the request path answers in well under a millisecond; past this the
# request is not kept waiting (the policy decides open or closed).
DEFAULT_TIMEOUT = 0.25
# Connections per client and process. A burst of requests queues for one of
# these (each call takes well under a millisecond) instead of opening a
# connection per request, which under load takes longer than the timeout.
POOL_SIZE = 32
# How long a call may wait for a free pooled connection. This is our own
# queueing, not Redis being slow, so it is not held to the Redis timeout.
POOL_WAIT = 1.0
_SCHEMES = {
    "redis": "standalone", "rediss": "standalone", "unix": "standalone",
    "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel",
    "redis+cluster": "cluster", "rediss+cluster": "cluster",
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str  # "standalone", "sentinel" or "cluster"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""  # Sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_url(url: str, password: str | None = None) -> RedisTarget:
    """Raises ValueError naming what is wrong with the URL."""
    parts = urlsplit(url)
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise ValueError(f"unknown Redis URL scheme {parts.scheme!r}: use one of "
                         + ", ".join(f"{s}://" for s in _SCHEMES))
    secret = password or (unquote(parts.password) if parts.password else None)
    user = unquote(parts.username) if parts.username else None
    tls = parts.scheme.startswith("rediss")
    if kind == "standalone":
        return RedisTarget(kind, url, password=secret, username=user, tls=tls)
    hostlist = parts.netloc.rpartition("@")[2]
    nodes = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{redacted(url)}: expected host:port[,host:port...], got {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if kind == "sentinel":
        if not path:
            raise ValueError(f"{redacted(url)}: name the master: redis+sentinel://host:port/NAME")
        db = path[1] if len(path) > 1 else "0"
        if not db.isdigit():
            raise ValueError(f"{redacted(url)}: database must be a number, got {db!r}")
        return RedisTarget(kind, url, tuple(nodes), path[0], int(db), user, secret, tls)
    return RedisTarget(kind, url, tuple(nodes), username=user, password=secret, tls=tls)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _common(target: RedisTarget, timeout: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout or DEFAULT_TIMEOUT,
        "decode_responses": True, "password": target.password, "username": target.username,
    }
    if target.kind != "standalone":
        options["ssl"] = target.tls  # from_url reads TLS from the scheme itself
    return options


def _keep_url_credentials(options: dict[str, Any], target: RedisTarget) -> None:
    # from_url reads user and password from the URL; pass ours only to override.
    for name in ("password", "username"):
        if options[name] is None:
            del options[name]


def async_client(url: str, timeout: float | None = DEFAULT_TIMEOUT,
                 password: str | None = None) -> Any:
    """A redis.asyncio client (Redis or RedisCluster). `timeout` bounds connecting
    and each read (None for a pub/sub subscriber, which waits on a quiet channel)."""
    target = parse_url(url, password)
    options = _common(target, timeout)
    if target.kind == "cluster":
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes],
            max_connections=POOL_SIZE, **options)
    # After Redis restarts every pooled connection is dead: retry once, at once,
    # on a new one, instead of failing a request per stale connection. Timeouts
    # are not retried: they would double the time a request waits.
    options["retry"] = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if target.kind == "sentinel":
        # redis-py leaves Sentinel and ClusterNode untyped.
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), socket_timeout=timeout or DEFAULT_TIMEOUT,
            sentinel_kwargs={"socket_timeout": timeout or DEFAULT_TIMEOUT})
        return sentinel.master_for(target.service, db=target.db, **options)
    _keep_url_credentials(options, target)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options)
    return redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def subscriber_client(url: str, password: str | None = None) -> Any:
    """A client to SUBSCRIBE with. On a Cluster, PUBLISH reaches every node, so
    one node is enough."""
    target = parse_url(url, password)
    if target.kind != "cluster":
        return async_client(url, None, password)
    host, port = target.nodes[0]
    return redis.asyncio.Redis(host=host, port=port, ssl=target.tls, **{
        k: v for k, v in _common(target, None).items() if k != "ssl"})


def sync_client(url: str, timeout: float = 5.0, password: str | None = None) -> Any:
    target = parse_url(url, password)
    options = _common(target, timeout)
    if target.kind == "cluster":
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                           for h, p in target.nodes], **options)
    options["retry"] = SyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if target.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), socket_timeout=timeout)
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service, db=target.db, **options)
    _keep_url_credentials(options, target)
    return redis.Redis.from_url(url, **options)


async def warm_up(client: Any, connections: int = 8) -> bool:
    """Open some pooled connections now rather than during the first burst of
    requests; False (and nothing else) when Redis is not reachable yet."""
    try:
        await asyncio.gather(*(client.ping() for _ in range(connections)))
    except (redis.RedisError, OSError, TimeoutError):
        return False
    return True


async def close(client: Any) -> None:
    """Close an async client, and for Sentinel the connections to the Sentinels too."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
