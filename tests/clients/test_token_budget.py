"""Token budgets through the whole gateway (real HAProxy 2.6 and 2.8, the
agent, Redis, the demo upstream) with the official SDKs: a key with a
1,000-token daily budget is admitted while tokens are left, charged exactly
what the upstream reported, refused with the SDKs' typed RateLimitError
once it is used up, and admitted again once its budget refilled."""

from __future__ import annotations

import json
import time

import anthropic
import ollama
import openai
import pytest

from spoa_agent.demo.stack import Gateway
from spoa_agent.store.redis import sync_client
from tests.clients.conftest import MODEL, _create

# Between requests, as a person at a chat window leaves: time for the
# answer's record to reach Redis (the Lua sends within ~0.1 s), which is
# what bounds the overshoot to one answer (docs/usage.md#token-budgets).
# On a loaded machine the tests wait for the charge itself (charged()).
THINK = 0.3


def ask(client: openai.OpenAI, n: int) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"question {n}"}])


def budget_state(gw: Gateway, key_id: str, budget: str, per_token_s: float) -> float:
    """The tokens the key's budget is charged with (less what refilled)."""
    client = sync_client(gw.redis_url)
    try:
        seconds, micros = client.time()
        tat = int(client.get(f"spoa:rl:{{spoa-rl}}:tokens:api_key:{key_id}@{budget}") or 0)
    finally:
        client.close()
    return max(0, tat - (seconds * 1_000_000 + micros)) / (per_token_s * 1_000_000)


def daily_charged(gw: Gateway, key_id: str, tokens: int) -> None:
    """Wait until the key's 1000/d budget is charged with `tokens`: what a
    person's pause gives on a quiet machine (a loaded one may need longer)."""
    time.sleep(THINK)
    deadline = time.monotonic() + 10
    while budget_state(gw, key_id, "1000/d", 86.4) < tokens - 1 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_used_up_daily_budget_is_refused_in_every_dialect(gw: Gateway) -> None:
    token = _create(gw, "--name", "budget-1000", "--tokens", "1000/d")
    key_id = token.split("_")[1]
    used = []  # tokens each admitted request used, as the upstream reported
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0) as oa, \
            pytest.raises(openai.RateLimitError) as refused:
        for n in range(100):
            answer = ask(oa, n)
            assert answer.usage is not None
            used.append(answer.usage.prompt_tokens + answer.usage.completion_tokens)
            daily_charged(gw, key_id, sum(used))
    error = refused.value
    assert error.code == "token_budget_exhausted"
    assert int(error.response.headers["retry-after"]) > 0

    total = sum(used)
    # Admitted while a token was left, so the budget was not spent before
    # the last answer; that answer overshot it by less than its own size.
    assert sum(used[:-1]) < 1000 <= total
    assert total - 1000 < used[-1]
    # Charged exactly what the upstream reported, once (refilled since: a
    # token per 86.4 s, so at most one back).
    assert total - 1 <= budget_state(gw, key_id, "1000/d", 86.4) <= total
    # What the operator sees: in debt by the overshoot.
    shown = gw.spoa_agent("token", "show", key_id, "--format", "json")
    assert 1000 - total <= json.loads(shown.stdout)["tokens_left"]["*"] <= 1000 - total + 1
    text = gw.spoa_agent("token", "show", key_id).stdout
    assert f"tokens left (*)  {1000 - total} of 1000/d" in text \
        or f"tokens left (*)  {1001 - total} of 1000/d" in text
    reported = [r["usage"] for r in gw.upstream_requests() if r.get("usage")]
    assert sum(u[0] + u[1] for u in reported[-len(used):]) == total

    # The same key in the other dialects: each SDK's own typed error.
    with anthropic.Anthropic(base_url=gw.url, api_key=token, max_retries=0) as an, \
            pytest.raises(anthropic.RateLimitError):
        an.messages.create(model=MODEL, max_tokens=16,
                           messages=[{"role": "user", "content": "hi"}])
    ol = ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ol.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    ol._client.close()
    assert ollama_refused.value.status_code == 429
    # Nothing refused reached the upstream.
    assert len([r for r in gw.upstream_requests() if r.get("usage")]) == len(reported)


def test_a_budget_refills(gw: Gateway) -> None:
    # 300 tokens every 3 s: one or two answers use it up, and a few seconds
    # give it back.
    token = _create(gw, "--name", "budget-refill", "--tokens", "300/3s")
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0) as oa:
        with pytest.raises(openai.RateLimitError) as refused:
            for n in range(100):
                ask(oa, 1000 + n)
                time.sleep(THINK)
        wait = int(refused.value.response.headers["retry-after"])
        assert 1 <= wait <= 10  # what is left of an answer or two (<= 307 tokens each)
        time.sleep(wait)
        assert ask(oa, 2000).usage is not None


def test_a_model_s_own_budget_leaves_the_key_s_other_models_alone(gw: Gateway) -> None:
    token = _create(gw, "--name", "budget-per-model", "--tokens", "1M/d",
                    "--tokens", "big-model=300/d")
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0) as oa:
        with pytest.raises(openai.RateLimitError) as refused:
            for n in range(100):
                oa.chat.completions.create(
                    model="big-model", messages=[{"role": "user", "content": f"big {n}"}])
                time.sleep(THINK)
        assert refused.value.code == "token_budget_exhausted"
        key_id = token.split("_")[1]
        left = json.loads(gw.spoa_agent("token", "show", key_id, "--format", "json").stdout)
        assert left["tokens_left"]["big-model"] <= 0 < left["tokens_left"]["*"]
        # The key's other models use the key's budget, far from spent.
        assert ask(oa, 3000).model == MODEL
        # A body that names the model twice could be charged to one model and
        # answered by the other: refused before the upstream.
        before = len(gw.upstream_requests())
        with pytest.raises(openai.BadRequestError):
            oa.chat.completions.create(model=MODEL, messages=[], extra_body={"Model": "x"})
        assert len(gw.upstream_requests()) == before


def test_streams_that_report_no_usage_are_charged_an_estimate(gw: Gateway) -> None:
    # Without stream_options.include_usage an OpenAI-compatible server
    # reports no usage in a stream: the gateway charges an estimate (a token
    # per streamed event, one per 4 bytes of the request) instead of nothing,
    # so streaming without asking is no way around a budget.
    token = _create(gw, "--name", "budget-unreported", "--tokens", "300/d")
    key_id = token.split("_")[1]
    before = len(gw.upstream_requests())
    charged_so_far = 0
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0) as oa, \
            pytest.raises(openai.RateLimitError):
        for n in range(100):
            with oa.chat.completions.create(
                    model=MODEL, stream=True,
                    messages=[{"role": "user", "content": f"unreported {n}"}]) as stream:
                chunks = list(stream)
            assert all(chunk.usage is None for chunk in chunks)  # the client sees no usage
            body_len = int(gw.upstream_requests()[-1]["body_len"])
            # Every chunk the SDK got, and [DONE], was an event.
            charged_so_far += len(chunks) + 1 + -(-body_len // 4)
            deadline = time.monotonic() + 10
            while budget_state(gw, key_id, "300/d", 288) < charged_so_far - 1 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert charged_so_far - 1 <= budget_state(gw, key_id, "300/d", 288) \
                <= charged_so_far
    streams = len(gw.upstream_requests()) - before
    assert 1 < streams < 100
