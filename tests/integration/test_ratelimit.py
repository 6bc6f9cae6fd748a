"""The limiter against a real Redis: exactness under concurrency, nothing
charged on refusal, agents with skewed clocks, Redis dying and returning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from structlog.testing import capture_logs

from spoa_agent.demo.stack import Gateway
from spoa_agent.ratelimit.limiter import MAX_PIPELINES, RateLimiter, Verdict, limit_key
from spoa_agent.ratelimit.limits import Limit, OnRedisError, parse_rate
from spoa_agent.store.redis import async_client, sync_client, warm_up

QUIET = structlog.wrap_logger(structlog.ReturnLogger())


_open: list[RateLimiter] = []


def run(body: Callable[..., Awaitable[None]], *args: Any) -> None:
    async def main() -> None:
        try:
            await body(*args)
        finally:
            while _open:
                await _open.pop().client.aclose()

    asyncio.run(main())


def limiter(url: str, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    # A loose timeout: these tests are about limits, and a loaded or stalled
    # CI machine must not turn a slow answer into a 503 (seen with 1 s during
    # a 5000-call burst). The breaker tests kill Redis: refused at once.
    rl = RateLimiter(async_client(url, 5.0), QUIET, clock=clock)
    _open.append(rl)
    return rl


def limit(rate: str, scope: str = "key", name: str = "k",
          mode: OnRedisError = OnRedisError.CLOSED) -> Limit:
    return Limit(scope, limit_key(scope, name), parse_rate(rate), mode)


async def check(rl: RateLimiter, limits: list[Limit]) -> Verdict:
    return rl.quick(limits) or await rl.check(limits)


def test_exactly_the_burst_is_admitted_across_two_agents(redis_gw: Gateway) -> None:
    async def body() -> None:
        a, b = limiter(redis_gw.redis_url), limiter(redis_gw.redis_url)
        for rl in (a, b):  # as the agent does at start-up
            assert await rl.load() and await warm_up(rl.client)
        limits = [limit("10/m")]
        verdicts = await asyncio.gather(*(check(a if i % 2 else b, limits) for i in range(200)))
        admitted = [v for v in verdicts if v.admitted]
        assert len(admitted) == 10
        refused = [v for v in verdicts if not v.admitted]
        assert all(v.status == 429 and v.retry_after >= 1 for v in refused)
        assert sorted(v.remaining for v in admitted) == list(range(10))

    run(body)


def test_one_more_after_period_over_n(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        # One every 2 s once the burst of 5 is spent: slow enough that a
        # stalled machine does not refill the bucket between two checks.
        limits = [limit("5/10s")]
        assert [(await check(rl, limits)).admitted for _ in range(6)] == [True] * 5 + [False]
        refused = await rl.check(limits)
        assert 1 <= refused.retry_after <= 2  # whole seconds, rounded up
        await asyncio.sleep(2.05)
        assert (await rl.check(limits)).admitted
        assert not (await rl.check(limits)).admitted

    run(body)


def test_refused_requests_are_not_charged(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        limits = [limit("1/s,burst=1")]
        assert (await rl.check(limits)).admitted
        retries = [(await rl.check(limits)).admitted for _ in range(10)]
        last_retry = time.monotonic()
        assert retries.count(False) >= 5
        # Had each refusal been charged one more second, the next would be
        # refused for several seconds; uncharged, one second after the last
        # retry is enough.
        await asyncio.sleep(max(0.0, last_retry + 1.2 - time.monotonic()))
        assert (await rl.check(limits)).admitted

    run(body)


def test_a_burst_uses_a_few_connections_and_every_call_is_answered(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        assert await rl.load()  # as the agent does at start-up
        limits = [limit("100000/s", name=f"k{i % 50}") for i in range(5000)]

        async def arriving(turn: int, one: Limit) -> Verdict:
            for _ in range(turn):  # requests arrive over many turns of the loop
                await asyncio.sleep(0)
            return await rl.check([one])

        verdicts = await asyncio.gather(*(arriving(i % 50, one) for i, one in enumerate(limits)))
        assert all(v.admitted for v in verdicts) and rl.calls == 5000
        # The limiter's connections, and this test's own.
        watcher = sync_client(redis_gw.redis_url)
        try:
            assert len(watcher.client_list()) <= MAX_PIPELINES + 1
        finally:
            watcher.close()

    run(body)


def test_a_request_that_gave_up_while_queued_is_not_charged(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        limits = [limit("10/m")]
        waiting = [asyncio.create_task(rl.check(limits)) for _ in range(10)]
        await asyncio.sleep(0)  # all ten queued; the pipeline leaves on the next turn
        for task in waiting[5:]:
            task.cancel()  # as the agent's handler timeout does
        assert all(v.admitted for v in await asyncio.gather(*waiting[:5]))
        assert [(await rl.check(limits)).admitted for _ in range(6)] == [True] * 5 + [False]

    run(body)


def test_all_limits_admit_or_none_is_charged(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        key, tight = limit("10/m"), limit("3/m", "global", "all")
        results = [(await rl.check([key, tight])).admitted for _ in range(6)]
        assert results == [True] * 3 + [False] * 3
        # The three refusals charged nothing to the key's own limit.
        fresh = limiter(redis_gw.redis_url)
        assert [(await fresh.check([key])).admitted for _ in range(8)] == [True] * 7 + [False]

    run(body)


def test_agents_with_skewed_clocks_agree(redis_gw: Gateway) -> None:
    async def body() -> None:
        ahead = limiter(redis_gw.redis_url, clock=lambda: time.monotonic() + 3600)
        behind = limiter(redis_gw.redis_url, clock=lambda: time.monotonic() - 3600)
        limits = [limit("6/m")]
        verdicts = await asyncio.gather(*(check(ahead if i % 2 else behind, limits)
                                          for i in range(40)))
        assert sum(v.admitted for v in verdicts) == 6
        # Each refuses locally afterwards for the same ~10 s, whatever its clock.
        for rl in (ahead, behind):
            cached = rl.quick(limits)
            assert cached is not None and not cached.admitted and cached.retry_after <= 10

    run(body)


def test_redis_down_open_and_closed_then_back(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        closed = [limit("100/m", name="c")]
        opened = [limit("100/m", name="o", mode=OnRedisError.OPEN)]
        assert (await check(rl, closed)).admitted
        redis_gw.processes["redis"].stop(sig=9)
        calls_before = None
        for i in range(40):
            closed_verdict = await check(rl, closed)
            open_verdict = await check(rl, opened)
            assert (closed_verdict.admitted, closed_verdict.status) == (False, 503)
            assert open_verdict.admitted
            if i == 10:
                calls_before = rl.calls
        assert rl.calls == calls_before  # breaker open: Redis is not called per request
        redis_gw.start_redis()
        back = time.monotonic()
        # The breaker lets one call try again after its 1 s cooldown.
        while not (await check(rl, closed)).admitted:
            assert time.monotonic() - back < 10.0, "not limiting again"
            await asyncio.sleep(0.05)

    run(body)


def test_one_turns_requests_are_one_script_call_in_order_each_all_or_nothing(
        redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        shared, tight = limit("4/m", name="shared"), limit("2/m", "global", "tight")
        # In arrival order: the tight pair refuses its third request, which is
        # then charged nothing on `shared`, so the plain requests after it
        # still find room there.
        plans = [[shared, tight], [shared, tight], [shared, tight], [shared], [shared],
                 [shared]]
        answers: list[Verdict] = []
        for limits in plans:
            rl.submit(limits, answers.append)  # one turn: nothing awaited in between
        while len(answers) < len(plans):
            await asyncio.sleep(0.01)
        assert [v.admitted for v in answers] == [True, True, False, True, True, False]
        assert (rl.calls, rl.script_calls) == (6, 1)
        assert answers[2].status == 429 and answers[2].limit == tight

    run(body)


def test_a_failing_answer_leaves_no_other_request_of_its_batch_waiting(
        redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        answers: list[Verdict] = []

        def broken(verdict: Verdict) -> None:
            raise RuntimeError("a bug in one request's answer")

        rl.submit([limit("100/m", name="a")], answers.append)
        rl.submit([limit("100/m", name="b")], broken)
        rl.submit([limit("100/m", name="c")], answers.append)
        with capture_logs() as logs:
            while len(answers) < 2:
                await asyncio.sleep(0.01)
        assert [v.admitted for v in answers] == [True, True] and rl.script_calls == 1
        assert [entry["event"] for entry in logs] == ["ratelimit_answer_error"]

    run(body)


def test_the_script_is_loaded_again_when_redis_forgot_it(redis_gw: Gateway) -> None:
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        limits = [limit("100/m", name="noscript")]
        assert (await rl.check(limits)).admitted
        watcher = sync_client(redis_gw.redis_url)
        try:
            watcher.script_flush()  # as a Redis restarted empty, or SCRIPT FLUSH
        finally:
            watcher.close()
        verdict = await rl.check(limits)
        assert verdict.admitted and verdict.remaining == 98  # the first one still counts
        assert rl.script_calls == 2

    run(body)


def test_the_verdict_shows_the_tightest_limit_and_the_longest_wait(redis_gw: Gateway) -> None:
    # The script names the limit with the fewest requests left (the first of
    # equals) and, on a refusal, each limit's wait: the verdict shows the
    # tightest, waits the longest, and caches every limit that refused.
    async def body() -> None:
        rl = limiter(redis_gw.redis_url)
        wide, narrow, equal = limit("10/m"), limit("4/m", "ip", "a"), limit("4/m", "route", "r")
        seen = [await rl.check([wide, narrow, equal]) for _ in range(4)]
        assert [(v.admitted, v.limit, v.remaining) for v in seen] == [
            (True, narrow, 3), (True, narrow, 2), (True, narrow, 1), (True, narrow, 0)]
        assert [v.reset for v in seen] == [15, 30, 45, 60]  # seconds until narrow is full
        refused = await rl.check([wide, narrow, equal])
        assert (refused.admitted, refused.status, refused.limit) == (False, 429, narrow)
        assert (refused.remaining, refused.reset, refused.retry_after) == (0, 60, 15)
        assert wide.key not in rl.refusing._items
        assert narrow.key in rl.refusing._items and equal.key in rl.refusing._items
        # The key's own limit alone still admits: the refusal charged nothing.
        assert (await rl.check([wide])).remaining == 5

    run(body)
