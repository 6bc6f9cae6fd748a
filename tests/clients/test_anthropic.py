"""The official Anthropic SDK (it sends its key as x-api-key) pointed at the
gateway: messages plain and streamed, and its typed errors."""

from __future__ import annotations

import anthropic
import pytest
from anthropic.types import MessageParam

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL

HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


def client(gw: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=10)


def test_lists_models_and_sends_a_message(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        assert [model.id for model in sdk.models.list()] == [MODEL]
        raw = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HI)
        message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == (
        "Hello from the upstream.")
    seen = raw.headers["x-upstream-saw"].split(",")
    assert "x-api-key" not in seen and "authorization" not in seen


def test_streams_a_message(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk, sdk.messages.stream(model=MODEL, max_tokens=64,
                                                     messages=HI) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from the upstream."


def test_wrong_key_raises_authentication_error(gw: Gateway, wrong_key: str) -> None:
    with client(gw, wrong_key) as sdk, pytest.raises(anthropic.AuthenticationError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert caught.value.status_code == 401
    # Anthropic's own error shape, so the SDK's message is ours.
    assert caught.value.body == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "the API key is not valid: check it, or ask the gateway's operator "
                   "for a new one"}}


def test_model_outside_the_keys_list_raises_permission_denied(gw: Gateway,
                                                             one_model_key: str) -> None:
    with client(gw, one_model_key) as sdk, pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk.messages.create(model="claude-opus-4", max_tokens=64, messages=HI)
    assert "'claude-opus-4' is not allowed for this API key" in caught.value.message


def test_rate_limited_key_raises_rate_limit_error_with_retry_after(gw: Gateway,
                                                                   limited_key: str) -> None:
    with client(gw, limited_key) as sdk:
        sdk.messages.create(model=MODEL, max_tokens=64, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as caught:
            sdk.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
