"""The official Ollama SDK pointed at the gateway: the safe endpoints work,
the model management ones are refused, errors come back as ResponseError
with the status."""

from __future__ import annotations

import ollama
import pytest

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL

HI = [{"role": "user", "content": "hi"}]


def client(gw: Gateway, key: str) -> ollama.Client:
    return ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_lists_models_and_chats(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        _lists_models_and_chats(sdk)


def _lists_models_and_chats(sdk: ollama.Client) -> None:
    assert [model.model for model in sdk.list().models] == [MODEL]
    assert sdk.chat(model=MODEL, messages=HI).message.content == "Hello from the upstream."
    assert sdk.generate(model=MODEL, prompt="hi").response == "Hello from the upstream."
    assert len(sdk.embed(model=MODEL, input="hi").embeddings) == 1
    assert sdk.show(MODEL).details is not None


def test_streams_a_chat(gw: Gateway, key: str) -> None:
    with client(gw, key) as sdk:
        parts = [part.message.content or "" for part in
                 sdk.chat(model=MODEL, messages=HI, stream=True)]
    assert len(parts) > 1 and "".join(parts) == "Hello from the upstream."


def test_wrong_key_raises_response_error_401(gw: Gateway, wrong_key: str) -> None:
    with client(gw, wrong_key) as sdk, pytest.raises(ollama.ResponseError) as caught:
        sdk.list()
    assert caught.value.status_code == 401
    assert caught.value.error.startswith("the API key is not valid")


@pytest.mark.parametrize("manage", ["pull", "delete", "create", "push", "copy"])
def test_model_management_is_refused_with_403(gw: Gateway, key: str, manage: str) -> None:
    with client(gw, key) as sdk:
        _refused(sdk, manage)


def _refused(sdk: ollama.Client, manage: str) -> None:
    calls = {"pull": lambda: sdk.pull(MODEL), "delete": lambda: sdk.delete(MODEL),
             "create": lambda: sdk.create(model="mine", from_=MODEL),
             "push": lambda: sdk.push(MODEL), "copy": lambda: sdk.copy(MODEL, "mine")}
    with pytest.raises(ollama.ResponseError) as caught:
        calls[manage]()
    assert caught.value.status_code == 403
    assert caught.value.error == "this endpoint is not exposed by the gateway"


def test_rate_limited_key_raises_response_error_429(gw: Gateway, limited_key: str) -> None:
    with client(gw, limited_key) as sdk:
        sdk.list()
        with pytest.raises(ollama.ResponseError) as caught:
            sdk.list()
    assert caught.value.status_code == 429
    assert "retry in" in caught.value.error
