"""No usage lost on an HAProxy reload: the old process still serves the
answers in flight, and each one's record reaches Redis before it exits
(its sender keeps its connection to the agent while counted answers are in
flight or records wait, which keeps the process until they are sent)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import openai
import pytest

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL, _create, running_gateway
from tests.clients.test_usage import usage_rows
from tests.conftest import EXAMPLE_CONFIG, haproxy_params


@pytest.fixture(params=haproxy_params())
def fresh_gw(request: pytest.FixtureRequest, tmp_path: pytest.TempPathFactory
             ) -> Iterator[Gateway]:
    yield from running_gateway(request, tmp_path / "gw", EXAMPLE_CONFIG)  # type: ignore[operator]


def test_answers_in_flight_across_a_reload_are_all_counted(fresh_gw: Gateway) -> None:
    gw = fresh_gw
    key = _create(gw, "--name", "reload")
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as oa:
        oa.models.list()  # the key checked once (argon2id) before the streams share it
    binary = str(gw.processes["haproxy"].popen.args[0])  # type: ignore[index]
    streams = 4
    done: list[int] = []

    def slow_stream(n: int) -> None:
        # Each chunk a quarter second apart: the answer outlives the reload.
        with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0,
                           default_headers={"X-Upstream-Chunk-Delay": "0.25"}) as oa, \
                oa.chat.completions.create(
                    model=MODEL, stream=True, stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"slow {n}"}]) as stream:
            chunks = list(stream)
        assert chunks[-1].usage is not None
        done.append(n)

    threads = [threading.Thread(target=slow_stream, args=(n,)) for n in range(streams)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the streams started on the old process
    gw.reload_haproxy(binary)  # returns once the old process has exited
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(done) == list(range(streams))

    reported = [r["usage"] for r in gw.upstream_requests() if r.get("usage")]
    assert len(reported) == streams
    # The old process served them to the end: HAProxy left only after.
    # Counted: the streams and the warm-up's model list, every token.
    deadline = time.monotonic() + 10
    rows = usage_rows(gw)
    while (not rows or rows[0]["requests"] < streams + 1) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = usage_rows(gw)
    assert rows and (rows[0]["requests"], rows[0]["tokens_in"], rows[0]["tokens_out"]) == (
        streams + 1, sum(u[0] for u in reported), sum(u[1] for u in reported))
