"""The official OpenAI SDK pointed at the gateway (real HAProxy, agent, Redis):
what a user of the SDK sees with a good key, a wrong key, a blocked endpoint
and a rate-limited key."""

from __future__ import annotations

import openai
import pytest

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL

HI = [{"role": "user", "content": "hi"}]


def client(gw: Gateway, key: str) -> openai.OpenAI:
    # No retries: the tests look at the first answer (the SDK would retry 429s).
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_lists_models_and_completes_a_chat(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        assert [model.id for model in sdk.models.list()] == [MODEL]
        raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
        completion = raw.parse()
        assert completion.choices[0].message.content == "Hello from the upstream."
        # The upstream lists the headers it got: the key stayed at the gateway.
        seen = raw.headers["x-upstream-saw"].split(",")
        assert "authorization" not in seen and "x-api-key" not in seen
        assert raw.headers["x-ratelimit-limit"] == "120"


def test_streams_a_chat(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        stream = sdk.chat.completions.create(model=MODEL, messages=HI, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                       if chunk.choices)
    assert text == "Hello from the upstream."


def test_responses_api(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        assert sdk.responses.create(model=MODEL, input="hi").output_text == (
            "Hello from the upstream.")


def test_wrong_key_raises_authentication_error(gw: Gateway, wrong_key: str) -> None:
    with client(gw, wrong_key) as sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "not valid" in caught.value.message
    assert wrong_key not in str(caught.value.body)


def test_blocked_endpoint_raises_permission_denied(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk, pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.files.list()  # GET /v1/files: not exposed by the example policy
    assert caught.value.code == "endpoint_not_exposed"


def test_model_outside_the_keys_list_is_refused(gw: Gateway, one_model_key: str) -> None:
    with client(gw, one_model_key) as sdk, pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.chat.completions.create(model="qwen2.5:72b", messages=HI)
    assert caught.value.code == "model_not_allowed"
    assert "qwen2.5:72b" in caught.value.message


def test_rate_limited_key_raises_rate_limit_error_with_retry_after(gw: Gateway,
                                                                   limited_key: str) -> None:
    with client(gw, limited_key) as sdk:
        sdk.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.models.list()
    headers = caught.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining"] == "0"
    assert f"retry in {headers['retry-after']} s" in caught.value.message
