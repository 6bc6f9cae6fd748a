"""A key limited to some models lists just those, through each official SDK
(real HAProxy 2.6 and 2.8): the gateway answers GET /v1/models and
/api/tags itself for such a key, and a lookup of another model by name is a
404 in the API's own dialect (the SDK's NotFoundError). A key without a
list still sees the upstream's own list."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

from spoa_agent.demo.stack import Gateway
from tests.clients.conftest import MODEL
from tests.e2e.conftest import create_key

ALLOWED = ["llama3.2:1b", "qwen2.5:7b"]


@pytest.fixture(scope="module")
def two_models_key(gw: Gateway) -> str:
    args = [arg for model in ALLOWED for arg in ("--model", model)]
    return str(create_key(gw, "--name", "two-models", *args)["token"])


def test_openai_lists_only_the_keys_models(gw: Gateway, two_models_key: str, key: str) -> None:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=two_models_key, max_retries=0) as sdk:
        assert sorted(model.id for model in sdk.models.list()) == ALLOWED
        assert sdk.models.retrieve(MODEL).id == MODEL  # allowed: the upstream answers
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.models.retrieve("gpt-4o")
        assert caught.value.code == "model_not_found" and "gpt-4o" in caught.value.message
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as sdk:
        assert [model.id for model in sdk.models.list()] == [MODEL]  # the upstream's list


def test_anthropic_lists_only_the_keys_models(gw: Gateway, two_models_key: str) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key=two_models_key, max_retries=0) as sdk:
        models = list(sdk.models.list())
        assert sorted(model.id for model in models) == ALLOWED
        assert {model.type for model in models} == {"model"}
        with pytest.raises(anthropic.NotFoundError):
            sdk.models.retrieve("claude-opus-4")


def test_ollama_lists_only_the_keys_models(gw: Gateway, two_models_key: str) -> None:
    with ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {two_models_key}"},
                       timeout=10) as sdk:
        assert sorted(model.model or "" for model in sdk.list().models) == ALLOWED
