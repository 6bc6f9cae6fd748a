"""Usage through the whole gateway, with the official SDKs: 1,000 mixed
requests (OpenAI chat and Responses, Anthropic messages, Ollama chat and
generate; streamed and not) through real HAProxy (2.6, 2.8) and two agent
processes, then the sums in Redis, as `spoa-agent usage` shows them, must be
exactly what the upstream reported, request by request."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL, running_gateway
from tests.conftest import EXAMPLE_CONFIG, haproxy_params
from tests.e2e.conftest import create_key

REQUESTS = 1000


@pytest.fixture(scope="module", params=haproxy_params())
def two_workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("usage")
    # The example policy, its per-address limit out of the way of 1,000
    # requests from one address (the key gets a rate of its own).
    config = workdir / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace('per_ip = "600/m"',
                                                         'per_ip = "100000/m"'))
    yield from running_gateway(request, workdir / "gw", config, workers=2)


def calls(oa: openai.OpenAI, an: anthropic.Anthropic,
          ol: ollama.Client) -> list[Callable[[int], object]]:
    """One way to ask for each API and mode; `n` makes each request differ
    (the upstream's usage depends on the request)."""

    def chat(n: int) -> object:
        return oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"question {n}"}])

    def chat_streamed(n: int) -> object:
        with oa.chat.completions.create(model=MODEL, stream=True,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": f"q {n}"}]) as s:
            return list(s)

    def responses(n: int) -> object:
        return oa.responses.create(model=MODEL, input=f"hi {n}")

    def responses_streamed(n: int) -> object:
        with oa.responses.stream(model=MODEL, input=f"hi {n}") as s:
            return s.get_final_response()

    def message(n: int) -> object:
        return an.messages.create(model=MODEL, max_tokens=16 + n,
                                  messages=[{"role": "user", "content": "hi"}])

    def message_streamed(n: int) -> object:
        with an.messages.stream(model=MODEL, max_tokens=16 + n,
                                messages=[{"role": "user", "content": "hi"}]) as s:
            return s.get_final_message()

    def ollama_chat(n: int) -> object:
        return ol.chat(model=MODEL, stream=False,
                       messages=[{"role": "user", "content": f"ask {n}"}])

    def ollama_chat_streamed(n: int) -> object:
        return list(ol.chat(model=MODEL, stream=True,
                            messages=[{"role": "user", "content": f"ask {n}"}]))

    def ollama_generate_streamed(n: int) -> object:
        return list(ol.generate(model=MODEL, prompt=f"say {n}", stream=True))

    return [chat, chat_streamed, responses, responses_streamed, message, message_streamed,
            ollama_chat, ollama_chat_streamed, ollama_generate_streamed]


def usage_rows(gw: Gateway, *args: str) -> list[dict[str, int | str]]:
    result = gw.spoa_agent("usage", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_totals_are_what_the_upstream_reported(two_workers: Gateway) -> None:
    gw = two_workers
    key = str(create_key(gw, "--name", "usage-sdk", "--rate", "100000/m")["token"])
    before = len(gw.upstream_requests())
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as oa, \
            anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as an:
        ol = ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}"})
        ways, rng = calls(oa, an, ol), random.Random(7)
        plan = [(rng.choice(ways), n) for n in range(REQUESTS)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: item[0](item[1]), plan))
        ol._client.close()

    # HAProxy's health checks (GET /) reach the upstream too.
    reached = [r for r in gw.upstream_requests()[before:] if r["method"] == "POST"]
    assert len(reached) == REQUESTS
    reported = [r["usage"] for r in reached]
    assert all(reported), "every one of these answers reports its usage"
    want_in, want_out = sum(u[0] for u in reported), sum(u[1] for u in reported)

    deadline = time.monotonic() + 30
    rows = usage_rows(gw)
    while (not rows or rows[0]["requests"] != REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = usage_rows(gw)
    assert len(rows) == 1, rows
    row = rows[0]
    key_id = str(row["key"])
    assert (row["name"], row["requests"], row["tokens_in"], row["tokens_out"], row["errors"]) \
        == ("usage-sdk", REQUESTS, want_in, want_out, 0)
    figures = {name: value for name, value in row.items() if name not in ("key", "name")}
    assert usage_rows(gw, "--by", "model") == [{"model": MODEL, **figures}]
    assert usage_rows(gw, "--key", key_id)[0]["tokens"] == want_in + want_out
