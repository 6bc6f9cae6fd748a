"""Streamed answers through the gateway arrive as the upstream sends them:
chunks 300 ms apart at the upstream reach the SDK 300 ms apart, not all at
the end (SSE for OpenAI, NDJSON for Ollama)."""

from __future__ import annotations

import itertools
import time

import ollama
import openai

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL

PACED = {"X-Upstream-Chunk-Delay": "0.3"}


def assert_paced(started: float, arrivals: list[float]) -> None:
    # The upstream sends its first chunk at once: it must not wait in HAProxy
    # for more data (without http-no-delay it waits ~200 ms).
    assert arrivals[0] - started < 0.15, arrivals[0] - started
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(gaps) >= 3, arrivals
    # Each chunk on its own, about 300 ms after the previous one (slack for a
    # busy machine), and the first well before the last.
    assert all(0.2 <= gap <= 0.6 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] >= 0.2 * len(gaps)


def test_openai_stream_arrives_chunk_by_chunk(gw: Gateway, key: str) -> None:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as sdk:
        sdk.models.list()  # the key's first check (argon2id) is not what is timed
        started = time.monotonic()
        stream = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=PACED)
        arrivals = [time.monotonic() for chunk in stream
                    if chunk.choices and chunk.choices[0].delta.content]
    assert_paced(started, arrivals)


def test_ollama_stream_arrives_chunk_by_chunk(gw: Gateway, key: str) -> None:
    with ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}", **PACED}) as sdk:
        sdk.list()  # the key's first check (argon2id) is not what is timed
        started = time.monotonic()
        arrivals = [time.monotonic() for part in
                    sdk.generate(model=MODEL, prompt="hi", stream=True) if part.response]
    assert_paced(started, arrivals)
