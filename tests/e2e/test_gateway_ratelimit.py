"""Rate limits through real HAProxy and two agent processes sharing a Redis."""

from __future__ import annotations

import collections
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, gateway
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key


def test_exactly_ten_of_two_hundred_then_one_more(haproxy: str, tmp_path: Path) -> None:
    with gateway(tmp_path, haproxy, EXAMPLE_CONFIG, workers=2) as gw:
        key = str(create_key(gw, "--name", "limited", "--rate", "10/m")["token"])
        with ThreadPoolExecutor(max_workers=100) as pool:
            answers = list(pool.map(lambda _: request(gw, "GET", "/api/tags", bearer(key)),
                                    range(200)))
        statuses = collections.Counter(status for status, _, _ in answers)
        assert statuses == {200: 10, 429: 190}
        refused = [headers for status, headers, _ in answers if status == 429]
        assert all(1 <= int(h["retry-after"]) <= 6 for h in refused)
        assert all(h["ratelimit-policy"] == '"key";q=10;w=60' for h in refused)
        assert all(h["x-ratelimit-remaining"] == "0" for h in refused)
        allowed = [headers for status, headers, _ in answers if status == 200]
        assert sorted(int(h["x-ratelimit-remaining"]) for h in allowed) == list(range(10))
        time.sleep(6.1)  # period / N
        assert request(gw, "GET", "/api/tags", bearer(key))[0] == 200
        assert request(gw, "GET", "/api/tags", bearer(key))[0] == 429


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_dies_and_returns(haproxy: str, tmp_path: Path, mode: str) -> None:
    config = tmp_path / "agent.toml"
    # Both the keys' and the limits' failure mode: "open" keeps serving
    # cached keys and admits; "closed" refuses with 503.
    text = EXAMPLE_CONFIG.read_text()
    assert text.count('on_redis_error = "closed"') == 2
    config.write_text(text.replace('on_redis_error = "closed"', f'on_redis_error = "{mode}"'))
    with gateway(tmp_path, haproxy, config, persistent_redis=True) as gw:
        key = str(create_key(gw, "--name", "steady", "--rate", "1000/m")["token"])
        assert request(gw, "GET", "/api/tags", bearer(key))[0] == 200  # key now cached
        gw.processes["redis"].stop(sig=9)
        expected = 503 if mode == "closed" else 200
        took = []
        for _ in range(30):
            started = time.monotonic()
            status, _, _ = request(gw, "GET", "/api/tags", bearer(key))
            took.append(time.monotonic() - started)
            assert status == expected
        # The breaker answers without Redis: a typical request does not wait
        # out the 250 ms Redis timeout (the median, so that one stall of a
        # loaded machine does not decide).
        assert statistics.median(took) < 0.125, f"{took} s per request while Redis is down"
        # Past the second in which "closed" still trusts a cached key.
        time.sleep(2)
        assert request(gw, "GET", "/api/tags", bearer(key))[0] == expected
        assert gw.processes["agent"].popen.poll() is None
        gw.start_redis(persistent=True)
        back = time.monotonic()
        # Limited again = the answer carries the limit's headers once more
        # (the breaker half-opens after 1 s).
        while "ratelimit" not in request(gw, "GET", "/api/tags", bearer(key))[1]:
            assert time.monotonic() - back < 10.0, "not rate limiting again within 10 s"
            time.sleep(0.05)


def test_requests_in_flight_per_key(gw: Gateway) -> None:
    key = str(create_key(gw, "--name", "parallel", "--max-in-flight", "2")["token"])
    slow = {**bearer(key), "X-Upstream-Delay": "1.5"}
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda _: request(gw, "POST", "/api/chat", slow, b"{}"),
                                range(5)))
    statuses = collections.Counter(status for status, _, _ in answers)
    assert statuses == {200: 2, 429: 3}
    refused = [(h, body) for status, h, body in answers if status == 429]
    assert all(h["retry-after"] == "1" and "in flight" in error_message(body)
               for h, body in refused)
    # Finished (and refused) requests no longer count.
    with ThreadPoolExecutor(max_workers=2) as pool:
        again = list(pool.map(lambda _: request(gw, "POST", "/api/chat", slow, b"{}")[0],
                              range(2)))
    assert again == [200, 200]
