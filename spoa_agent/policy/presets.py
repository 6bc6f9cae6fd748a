"""Route presets for the APIs this gateway fronts, included by name.

    presets = ["ollama-safe", "openai", "anthropic"]

`ollama-safe` exposes Ollama's inference and metadata endpoints only: model
pull, push, create, copy and delete are not in it, so they stay refused.
"""

from __future__ import annotations

from spoa_agent.policy.routes import Route

# name, methods, path, whether the JSON body names a model
_Spec = tuple[str, tuple[str, ...], str, bool]

_PRESETS: dict[str, list[_Spec]] = {
    "ollama-safe": [
        ("ollama-version", ("GET",), "/api/version", False),
        ("ollama-tags", ("GET",), "/api/tags", False),
        ("ollama-show", ("POST",), "/api/show", True),
        ("ollama-chat", ("POST",), "/api/chat", True),
        ("ollama-generate", ("POST",), "/api/generate", True),
        ("ollama-embed", ("POST",), "/api/embed", True),
    ],
    "openai": [
        ("openai-chat", ("POST",), "/v1/chat/completions", True),
        ("openai-responses", ("POST",), "/v1/responses", True),
        ("openai-models", ("GET",), "/v1/models", False),
        ("openai-model", ("GET",), "/v1/models/{model}", False),
        ("openai-embeddings", ("POST",), "/v1/embeddings", True),
    ],
    "anthropic": [
        ("anthropic-messages", ("POST",), "/v1/messages", True),
        ("anthropic-count-tokens", ("POST",), "/v1/messages/count_tokens", True),
    ],
}

NAMES = tuple(_PRESETS)


def preset_routes(name: str, host: str = "") -> list[Route]:
    """The routes of a preset; KeyError for an unknown name."""
    return [Route(path, frozenset(methods), rule, host=host, model_in_body=model,
                  preset=name)
            for rule, methods, path, model in _PRESETS[name]]
