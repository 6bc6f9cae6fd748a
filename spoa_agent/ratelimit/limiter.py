"""Checks every limit of a request in Redis, the requests of a turn of the
event loop together: one script call (gcra_batch.lua) per batch.

Before Redis: the over-limit cache (a limit known to refuse until T refuses
locally) and the circuit breaker (a dead Redis is not called on every
request). When Redis cannot answer within the client's timeout, each limit's
`on_redis_error` decides: `open` admits, `closed` refuses with 503.

No Task, Future or timer per request: submit() queues a request with the
callback that answers it; once per turn of the loop the queue leaves as one
script call, and one callback per batch answers every request in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from spoa_agent import metrics
from spoa_agent.cache import TtlLru
from spoa_agent.ratelimit.breaker import CircuitBreaker
from spoa_agent.ratelimit.limits import Limit, OnRedisError
from spoa_agent.reasons import Reason
from spoa_agent.record import Record

GCRA_SCRIPT = resources.files("spoa_agent.ratelimit").joinpath("gcra_batch.lua").read_text()
# Every limiter key shares this hash tag: one script call may touch all the
# limits of a batch, which on a Redis Cluster must live in one slot.
HASH_TAG: Final = "{spoa-rl}"


def limit_key(scope: str, name: str) -> str:
    return f"spoa:rl:{HASH_TAG}:{scope}:{name}"


class Verdict(Record):
    """What the limits say of one request."""

    __slots__ = ("admitted", "limit", "reason", "remaining", "reset", "retry_after", "status")

    def __init__(self, admitted: bool, status: int = 200, reason: Reason | None = None,
                 limit: Limit | None = None, remaining: int = 0, reset: int = 0,
                 retry_after: int = 0) -> None:
        self.admitted = admitted
        self.status = status  # 429 over a limit, 503 Redis down under a closed limit
        self.reason = reason
        # The limit to show the client: the tightest one, or the one that refused.
        self.limit = limit
        self.remaining = remaining
        self.reset = reset  # seconds until the tightest limit is full again
        self.retry_after = retry_after  # whole seconds, at least 1 when refused with 429

    def _fields(self) -> tuple[object, ...]:
        return (self.admitted, self.status, self.reason, self.limit, self.remaining, self.reset,
                self.retry_after)


UNLIMITED: Final = Verdict(True)
Answer = Callable[[Verdict], None]


class _Call:
    """One queued request: its limits, who to answer, until when to bother.
    (A plain slotted class, for the reason of Record, without its equality.)"""

    __slots__ = ("answer", "deadline", "limits", "now", "waiter")

    def __init__(self, limits: Sequence[Limit], answer: Answer, now: float, deadline: float,
                 waiter: asyncio.Future[Verdict] | None) -> None:
        self.limits = limits
        self.answer = answer
        self.now = now
        self.deadline = deadline
        self.waiter = waiter  # check()'s: once done, nobody waits any more


# At most this many script calls wait on Redis at once, each for at most
# MAX_BATCH requests. Under a burst the requests that arrive meanwhile queue
# and leave together when a call returns: a few Redis connections and a few
# large calls, instead of one small call per request, which under overload
# starved the loop until reads timed out.
MAX_PIPELINES: Final = 4
MAX_BATCH: Final = 512


RATELIMIT_CALLS: Final = metrics.REDIS_CALLS.labels("ratelimit")


def _refusal(limit: Limit) -> Reason:
    """Why a request this limit refuses is refused: the one that waits longest names it."""
    return Reason.TOKEN_BUDGET_EXHAUSTED if limit.is_budget else Reason.RATE_LIMITED


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
        give_up_after: float = math.inf,
    ) -> None:
        self.client = client
        self.log = log
        self.breaker = breaker or CircuitBreaker()
        self.clock = clock
        # A request queued longer than this (the handler's deadline) is
        # neither sent nor charged: HAProxy has stopped waiting for it.
        self.give_up_after = give_up_after
        self._sha = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()
        # EVALSHA and the script's digest, as the first two RESP bulk strings.
        self._evalsha_head = b"$7\r\nEVALSHA\r\n$40\r\n" + self._sha.encode() + b"\r\n"
        self._direct = isinstance(client, redis.asyncio.Redis)
        self._idle: list[Any] = []  # connections kept for script calls, between calls
        self._queue: list[_Call] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        # limit key -> (refused until, on our monotonic clock); bounded.
        self.refusing: TtlLru[str, float] = TtlLru(cache_size, max_age=86400.0)
        self.calls = 0  # requests sent to Redis
        self.script_calls = 0  # batches, one script call each

    async def load(self) -> bool:
        """Load the script into Redis ahead of the first request (False if Redis is away)."""
        try:
            async with asyncio.timeout(1.0):
                await self.client.script_load(GCRA_SCRIPT)
        except (redis.RedisError, OSError, TimeoutError):
            return False
        return True

    def quick(self, limits: Sequence[Limit]) -> Verdict | None:
        """A verdict reached without Redis, or None: then submit() or check()."""
        if not limits:
            return UNLIMITED
        now = self.clock()
        if self.refusing:  # empty while no one is over a limit: nothing to look up
            for limit in limits:
                until = self.refusing.get(limit.key, now)
                if until is not None and until > now:
                    wait = math.ceil(until - now)
                    return Verdict(False, 429, _refusal(limit), limit, 0, wait, max(1, wait))
        if not self.breaker.allow(now):
            return self._without_redis(limits)
        return None

    def submit(self, limits: Sequence[Limit], answer: Answer,
               waiter: asyncio.Future[Verdict] | None = None) -> None:
        """Check `limits` in Redis with the other requests of this turn;
        answer(verdict) is called once, from the batch's callback. Call
        quick() first. (`waiter`: check()'s future; once it is done, nobody
        waits any more.)"""
        now = self.clock()
        self._queue.append(_Call(limits, answer, now, now + self.give_up_after, waiter))
        if not self._flush_scheduled and len(self._sending) < MAX_PIPELINES:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def check(self, limits: Sequence[Limit]) -> Verdict:
        """submit() as a coroutine (tests, `spoa-agent check`). A caller that
        stops waiting before the batch leaves is neither sent nor charged."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()

        def answer(verdict: Verdict) -> None:
            if not future.done():
                future.set_result(verdict)

        self.submit(limits, answer, future)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        now = self.clock()
        queue, self._queue = self._queue, []
        for call in queue:
            if call.deadline <= now or (call.waiter is not None and call.waiter.done()):
                # Gave up while queued: not sent, not charged.
                self._answer(call, self._without_redis(call.limits))
            else:
                self._queue.append(call)
        while self._queue and len(self._sending) < MAX_PIPELINES:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._flush()  # what queued while every call was busy

    async def _send(self, batch: list[_Call]) -> None:
        self.calls += len(batch)
        self.script_calls += 1
        RATELIMIT_CALLS.inc()
        # gcra_batch.lua's ARGV[1]: per request, its count of limits, then
        # each limit's pair.
        parts = []
        for call in batch:
            parts.append(str(len(call.limits)))
            for limit in call.limits:
                parts.append(limit.batch_args)
        args = " ".join(parts)
        try:
            # The client's socket timeouts bound Redis itself (connect, each
            # read); waiting for a pooled connection is not counted against it.
            try:
                reply = await self._evalsha(batch, args)
            except NoScriptError:  # Redis restarted empty
                await self.client.script_load(GCRA_SCRIPT)
                reply = await self._evalsha(batch, args)
            numbers = list(map(int, reply.split()))
        except Exception as err:  # every waiting request must get its answer
            self.breaker.failure(self.clock())
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
            metrics.BREAKER_OPEN.set(self.breaker.state == "open")
            self.log.warning("ratelimit_redis_error", error=str(err) or type(err).__name__,
                             breaker=self.breaker.state, requests=len(batch))
            for call in batch:
                self._answer(call, self._without_redis(call.limits))
            return
        if self.breaker.failures:  # else closed already, and the gauge 0 (a lock each)
            self.breaker.success()
            metrics.BREAKER_OPEN.set(False)
        at = 0
        verdict = self._verdict
        for call in batch:
            limits = call.limits
            try:
                call.answer(verdict(limits, numbers, at, call.now))
            except Exception:  # one failing answer must not leave the rest of its batch waiting
                self.log.exception("ratelimit_answer_error")
            at += 4 if numbers[at] == 1 else 4 + len(limits)

    async def _evalsha(self, batch: list[_Call], args: str) -> Any:
        """gcra_batch.lua on every limit key of the batch, in order."""
        if not self._direct:  # a Redis Cluster (or a stand-in): the client routes it
            keys = [limit.key for call in batch for limit in call.limits]
            return await self.client.evalsha(self._sha, len(keys), *keys, args)
        # A standalone or Sentinel-managed Redis: the command packed here from
        # the keys' pre-encoded forms, sent on a connection this limiter keeps
        # (one per script call in flight), which skips redis-py's per-call
        # packing, pool checkout and bookkeeping (a third of the limiter's
        # time). Every failure disconnects the connection (redis-py's own
        # send and read do), so the next call reconnects it.
        key_args = [limit.key_arg for call in batch for limit in call.limits]
        count = str(len(key_args)).encode()
        encoded = args.encode()
        packed = b"".join([b"*%d\r\n" % (len(key_args) + 4), self._evalsha_head,
                           b"$%d\r\n%s\r\n" % (len(count), count), *key_args,
                           b"$%d\r\n%s\r\n" % (len(encoded), encoded)])
        connection = self._idle.pop() if self._idle else \
            await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # The client's retry policy (once, on a fresh connection, after
            # Redis restarted), as execute_command applies it.
            return await connection.retry.call_with_retry(
                lambda: self._round_trip(connection, packed),
                lambda _error: connection.disconnect())
        finally:
            self._idle.append(connection)

    @staticmethod
    async def _round_trip(connection: Any, packed: bytes) -> Any:
        if not connection.is_connected:
            await connection.connect()
        # redis-py bounds a write by its socket timeout with asyncio.wait_for,
        # which on Python 3.11 makes a Task (and a turn of the loop) per
        # send; asyncio.timeout bounds it here instead, with a timer on this
        # task, and fails it with the same error. The read keeps redis-py's
        # own timeout.
        timeout, connection.socket_timeout = connection.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await connection.send_packed_command(packed, check_health=False)
        except TimeoutError:  # the connection is closed already (redis-py's send does it)
            raise redis.TimeoutError("Timeout writing to socket") from None
        finally:
            connection.socket_timeout = timeout
        return await connection.read_response()

    def _answer(self, call: _Call, verdict: Verdict) -> None:
        try:
            call.answer(verdict)
        except Exception:  # one failing answer must not leave the rest of its batch waiting
            self.log.exception("ratelimit_answer_error")

    def _verdict(self, limits: Sequence[Limit], numbers: list[int], at: int,
                 now: float) -> Verdict:
        """A request's verdict from its part of the script's answer, from
        numbers[at]: admitted, the tightest limit's index (len(limits) when
        all are token budgets, which have no requests to count down), its
        remaining and reset_us, then, if refused, retry_us per limit."""
        index, remaining = numbers[at + 1], numbers[at + 2]
        tightest = limits[index] if index < len(limits) else None
        reset = -(-numbers[at + 3] // 1_000_000)  # _seconds_up(), inline: whole seconds, up
        if numbers[at] == 1:
            return Verdict(True, 200, None, tightest, remaining, reset)
        retry_us, refused_by = 0, limits[0]
        for limit, limit_retry_us in zip(limits, numbers[at + 4:at + 4 + len(limits)],
                                         strict=True):
            if limit_retry_us > 0:
                if limit_retry_us > retry_us:
                    retry_us, refused_by = limit_retry_us, limit
                self.refusing.put(limit.key, now + limit_retry_us / 1_000_000, now)
        # A refusal shows the limit that refused it (the one that waits
        # longest), a token budget included: none of it is left.
        retry = max(1, _seconds_up(retry_us))
        return Verdict(False, 429, _refusal(refused_by), refused_by, 0, max(reset, retry), retry)

    def _without_redis(self, limits: Sequence[Limit]) -> Verdict:
        closed = [limit for limit in limits if limit.on_redis_error is OnRedisError.CLOSED]
        if closed:
            return Verdict(False, 503, Reason.RATELIMIT_UNAVAILABLE, closed[0])
        return UNLIMITED
