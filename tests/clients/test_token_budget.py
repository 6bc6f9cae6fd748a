"""Token budgets through the whole gateway (real HAProxy 2.6 and 2.8, the
agent, Redis, the demo upstream) with the official SDKs: a key with a
1,000-token daily budget is admitted while tokens are left, charged exactly
what the upstream reported, refused with the SDKs' typed RateLimitError
once it is used up, and admitted again once its budget refilled."""

from __future__ import annotations

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
THINK = 0.3


def ask(client: openai.OpenAI, n: int) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"question {n}"}])


def budget_state(gw: Gateway, key_id: str) -> float:
    """The tokens the key's budget is charged with (not yet refilled)."""
    client = sync_client(gw.redis_url)
    try:
        [key] = client.keys(f"spoa:rl:{{spoa-rl}}:tokens:api_key:{key_id}@*")
        seconds, micros = client.time()
        tat = int(client.get(key) or 0)
    finally:
        client.close()
    return max(0, tat - (seconds * 1_000_000 + micros)) / 86_400_000


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
            time.sleep(THINK)
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
    assert total - 1 <= budget_state(gw, key_id) <= total
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
        assert 1 <= wait <= 4  # at most one answer (<= 307 tokens) of debt, 100 tokens/s
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
        # The key's other models use the key's budget, far from spent.
        assert ask(oa, 3000).model == MODEL
        # A body that names the model twice could be charged to one model and
        # answered by the other: refused before the upstream.
        before = len(gw.upstream_requests())
        with pytest.raises(openai.BadRequestError):
            oa.chat.completions.create(model=MODEL, messages=[], extra_body={"Model": "x"})
        assert len(gw.upstream_requests()) == before
