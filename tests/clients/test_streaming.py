"""Streamed answers through the gateway arrive as the upstream sends them:
chunks 300 ms apart at the upstream reach the SDK 300 ms apart, not all at
the end (SSE for OpenAI, NDJSON for Ollama)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import ollama
import openai

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL

PACED = {"X-Upstream-Chunk-Delay": "0.3"}


def paced(started: float, arrivals: list[float]) -> bool:
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # The upstream sends its first chunk at once: it must not wait in HAProxy
    # for more data (without http-no-delay it waits ~200 ms). Then each chunk
    # on its own, about 300 ms after the previous one (slack for a busy
    # machine), and the first well before the last.
    return (arrivals[0] - started < 0.15 and len(gaps) >= 3
            and all(0.2 <= gap <= 0.6 for gap in gaps)
            and arrivals[-1] - arrivals[0] >= 0.2 * len(gaps))


def assert_paced(stream: Callable[[], list[float]]) -> None:
    """`stream` streams once and returns when each chunk arrived, after its
    start time. A buffering gateway fails every try; a stalled CI machine
    (seen: stalls of a second) spoils one, so three tries are allowed."""
    seen = []
    for _ in range(3):
        started, *arrivals = stream()
        if paced(started, arrivals):
            return
        seen.append([round(t - started, 3) for t in arrivals])
    raise AssertionError(f"chunks did not arrive 300 ms apart; seconds after the start: {seen}")


def test_openai_stream_arrives_chunk_by_chunk(gw: Gateway, key: str) -> None:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as sdk:
        sdk.models.list()  # the key's first check (argon2id) is not what is timed

        def stream() -> list[float]:
            started = time.monotonic()
            chunks = sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                extra_headers=PACED)
            return [started] + [time.monotonic() for chunk in chunks
                                if chunk.choices and chunk.choices[0].delta.content]

        assert_paced(stream)


def test_ollama_stream_arrives_chunk_by_chunk(gw: Gateway, key: str) -> None:
    with ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}", **PACED}) as sdk:
        sdk.list()  # the key's first check (argon2id) is not what is timed

        def stream() -> list[float]:
            started = time.monotonic()
            return [started] + [time.monotonic() for part in
                                sdk.generate(model=MODEL, prompt="hi", stream=True)
                                if part.response]

        assert_paced(stream)
