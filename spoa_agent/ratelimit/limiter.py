"""Checks every limit of a request in one Redis round trip (gcra.lua).

Before Redis: the over-limit cache (a limit known to refuse until T refuses
locally) and the circuit breaker (a dead Redis is not called on every
request). When Redis cannot answer within the client's timeout, each limit's
`on_redis_error` decides: `open` admits, `closed` refuses with 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from spoa_agent import metrics
from spoa_agent.cache import TtlLru
from spoa_agent.ratelimit.breaker import CircuitBreaker
from spoa_agent.ratelimit.limits import Limit, OnRedisError

GCRA_SCRIPT = resources.files("spoa_agent.ratelimit").joinpath("gcra.lua").read_text()
# Every limiter key shares this hash tag: one script call may touch all the
# limits of a request, which on a Redis Cluster must live in one slot.
HASH_TAG = "{spoa-rl}"


def limit_key(scope: str, name: str) -> str:
    return f"spoa:rl:{HASH_TAG}:{scope}:{name}"


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    status: int = 200  # 429 over a limit, 503 Redis down under a closed limit
    reason: str = ""
    limit: Limit | None = None  # the limit to show the client: the tightest one
    remaining: int = 0
    reset: int = 0  # seconds until the tightest limit is full again
    retry_after: int = 0  # whole seconds, at least 1 when refused with 429


UNLIMITED = Verdict(True)


# One queued script call: its keys, its arguments, where its answer goes.
_Call = tuple[list[str], str, "asyncio.Future[list[int]]"]

# At most this many pipelines wait on Redis at once, each of at most
# MAX_BATCH calls. Under a burst the calls that arrive meanwhile queue and
# leave together when a pipeline returns: the agent holds a few Redis
# connections and makes few large reads, instead of one connection and one
# small read per turn of the event loop, which under overload starved the
# loop until reads timed out.
MAX_PIPELINES = 4
MAX_BATCH = 512


RATELIMIT_CALLS = metrics.REDIS_CALLS.labels("ratelimit")


def _seconds_up(microseconds: int) -> int:
    return math.ceil(microseconds / 1_000_000)


class RateLimiter:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        log: Any,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 100_000,
    ) -> None:
        self.client = client
        self.log = log
        self.breaker = breaker or CircuitBreaker()
        self.clock = clock
        self._sha = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()
        self._queue: list[_Call] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        # limit key -> (refused until, on our monotonic clock); bounded.
        self.refusing: TtlLru[str, float] = TtlLru(cache_size, max_age=86400.0)
        self.calls = 0

    async def load(self) -> bool:
        """Load the script into Redis ahead of the first request (False if Redis is away)."""
        try:
            async with asyncio.timeout(1.0):
                await self.client.script_load(GCRA_SCRIPT)
        except (redis.RedisError, OSError, TimeoutError):
            return False
        return True

    def quick(self, limits: Sequence[Limit]) -> Verdict | None:
        """A verdict reached without Redis, or None: then await check()."""
        if not limits:
            return UNLIMITED
        now = self.clock()
        for limit in limits:
            until = self.refusing.get(limit.key, now)
            if until is not None and until > now:
                wait = math.ceil(until - now)
                return Verdict(False, 429, "rate_limited", limit, 0, wait, max(1, wait))
        if not self.breaker.allow(now):
            return self._without_redis(limits)
        return None

    async def check(self, limits: Sequence[Limit]) -> Verdict:
        """One script call for all limits; call quick() first.

        Calls made in the same turn of the event loop, or while every
        pipeline is busy, leave together in one pipeline (one write, one
        read): a request still costs one script call, and a burst costs one
        round trip instead of one each.
        """
        now = self.clock()
        args = " ".join([limit.rate.script_args for limit in limits])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.append(([limit.key for limit in limits], args, future))
        if not self._flush_scheduled and len(self._sending) < MAX_PIPELINES:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            result = await future
        except (redis.RedisError, OSError, TimeoutError):
            return self._without_redis(limits)  # logged once per batch by _send
        return self._verdict(limits, result, now)

    def _flush(self) -> None:
        self._flush_scheduled = False
        # A request that gave up while queued (its handler timed out) is
        # neither sent nor charged.
        self._queue = [call for call in self._queue if not call[2].done()]
        while self._queue and len(self._sending) < MAX_PIPELINES:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._flush()  # what queued while every pipeline was busy

    async def _send(self, batch: list[_Call], reloaded: bool = False) -> None:
        self.calls += len(batch)
        RATELIMIT_CALLS.inc(len(batch))
        try:
            # The client's socket timeouts bound Redis itself (connect, each
            # read); waiting for a pooled connection is not counted against it.
            results = await self._evalsha_all(batch)
        except Exception as err:  # every waiting request must get its answer
            self.breaker.failure(self.clock())
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
            metrics.BREAKER_OPEN.set(self.breaker.state == "open")
            self.log.warning("ratelimit_redis_error", error=str(err) or type(err).__name__,
                             breaker=self.breaker.state, requests=len(batch))
            failure = err if isinstance(err, redis.RedisError) else redis.RedisError(str(err))
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        if any(isinstance(r, redis.ConnectionError | redis.TimeoutError | OSError)
               for r in results):
            self.breaker.failure(self.clock())  # per call errors (Cluster)
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
        else:
            self.breaker.success()
        metrics.BREAKER_OPEN.set(self.breaker.state == "open")
        missing = [call for call, result in zip(batch, results, strict=True)
                   if isinstance(result, NoScriptError)]
        if missing and not reloaded and await self.load():  # Redis restarted empty
            await self._send(missing, reloaded=True)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result([int(x) for x in result.split()])

    async def _evalsha_all(self, batch: list[_Call]) -> list[Any]:
        if isinstance(self.client, redis.asyncio.RedisCluster):
            # redis-py refuses EVALSHA in a Cluster pipeline: one call each.
            return list(await asyncio.gather(
                *(self.client.evalsha(self._sha, len(keys), *keys, args)
                  for keys, args, _ in batch), return_exceptions=True))
        pipe = self.client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self._sha, len(keys), *keys, args)
        return list(await pipe.execute(raise_on_error=False))

    def _verdict(self, limits: Sequence[Limit], result: list[int], now: float) -> Verdict:
        admitted = result[0] == 1
        tightest: tuple[int, int, int, Limit] | None = None
        retry_us = 0
        for index, limit in enumerate(limits):
            remaining, reset_us, limit_retry_us = result[1 + 3 * index: 4 + 3 * index]
            if limit_retry_us > 0:
                retry_us = max(retry_us, limit_retry_us)
                self.refusing.put(limit.key, now + limit_retry_us / 1_000_000, now)
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, reset_us, limit_retry_us, limit)
        assert tightest is not None
        remaining, reset_us, _, limit = tightest
        if admitted:
            return Verdict(True, 200, "", limit, remaining, _seconds_up(reset_us))
        return Verdict(False, 429, "rate_limited", limit, remaining, _seconds_up(reset_us),
                       max(1, _seconds_up(retry_us)))

    def _without_redis(self, limits: Sequence[Limit]) -> Verdict:
        closed = [limit for limit in limits if limit.on_redis_error is OnRedisError.CLOSED]
        if closed:
            return Verdict(False, 503, "ratelimit_unavailable", closed[0])
        return UNLIMITED
