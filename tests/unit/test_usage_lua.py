"""lua/spoa_usage.lua's scanner under plain Lua 5.3 and 5.4, on the answers
the demo upstream gives in each API (streamed and not), cut into chunks of
every size from 1 byte: the usage it reads is what the answer reported. The
filter inside real HAProxy is tested in tests/e2e/test_usage.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from email.message import Message

import pytest

from spoa_agent.demo import upstream
from spoa_agent.demo.stack import REPO
from spoa_agent.install.shipped import SHIPPED

LUA_FILE = SHIPPED / "lua" / "spoa_usage.lua"
DRIVER = REPO / "tests" / "lua" / "scan_usage.lua"
CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


def _answer(path: str, body: dict[str, object],
            anthropic: bool = False) -> tuple[bytes, tuple[int, int]]:
    headers = Message()
    if anthropic:
        headers["anthropic-version"] = "2023-06-01"
    request = upstream.Request(path, headers, body)
    route = upstream._route("POST", path)
    assert route is not None
    reply = route(request)
    if isinstance(reply, upstream.Stream):
        data = b"".join(reply.events)
    else:
        assert isinstance(reply, upstream.Reply)
        data = json.dumps(reply.body).encode()
    assert request.reported, path
    return data, request.reported[0]


ANSWERS = {
    "openai": ("/v1/chat/completions", {"model": "m1", "messages": CHAT}),
    "openai streamed": ("/v1/chat/completions", {"model": "m1", "messages": CHAT, "stream": True,
                                                 "stream_options": {"include_usage": True}}),
    "responses": ("/v1/responses", {"model": "m2", "input": "hi"}),
    "responses streamed": ("/v1/responses", {"model": "m2", "input": "hi", "stream": True}),
    "anthropic": ("/v1/messages", {"model": "m3", "max_tokens": 9, "messages": CHAT}),
    "anthropic streamed": ("/v1/messages", {"model": "m3", "max_tokens": 9, "messages": CHAT,
                                            "stream": True}),
    "ollama chat": ("/api/chat", {"model": "m4", "messages": CHAT, "stream": False}),
    "ollama chat streamed": ("/api/chat", {"model": "m4", "messages": CHAT}),
    "ollama generate streamed": ("/api/generate", {"model": "m4", "prompt": "hi"}),
}


def _scan(lua: str, cases: list[tuple[int, bytes]],
          request_bytes: int = 0) -> list[tuple[int, int, str]]:
    if shutil.which(lua) is None:
        pytest.fail(f"{lua} is not installed: run `make deps`")
    stdin = b"".join(b"%d %d %d\n" % (size, len(data), request_bytes) + data
                     for size, data in cases)
    done = subprocess.run([lua, str(DRIVER), str(LUA_FILE)], input=stdin, capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    out = []
    for line in done.stdout.decode().splitlines():
        used_in, used_out, model = line.split(" ", 2)
        out.append((int(used_in), int(used_out), model))
    return out


@pytest.mark.parametrize("lua", ["lua5.3", "lua5.4"])
@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_the_usage_read_is_the_usage_reported_at_every_chunk_size(lua: str, name: str) -> None:
    path, body = ANSWERS[name]
    data, reported = _answer(path, body, anthropic=path == "/v1/messages")
    sizes = sorted({*range(1, 80), 97, 128, 500, 4096, len(data)})
    results = _scan(lua, [(size, data) for size in sizes])
    assert set(results) == {(*reported, str(body["model"]))}, name


@pytest.mark.parametrize("lua", ["lua5.4"])
def test_text_in_the_answer_cannot_fake_a_count(lua: str) -> None:
    # What the model writes is inside JSON strings, its quotes escaped.
    text = 'ignore this: "prompt_tokens": 999999, "eval_count": 88888, "model": "fake"'
    answer = json.dumps({"model": "m1", "choices": [{"message": {"content": text}}],
                         "usage": {"prompt_tokens": 12, "completion_tokens": 3}}).encode()
    assert _scan(lua, [(7, answer), (len(answer), answer)]) == [(12, 3, "m1")] * 2


@pytest.mark.parametrize("lua", ["lua5.3", "lua5.4"])
def test_a_stream_that_reports_no_usage_is_estimated_never_free(lua: str) -> None:
    # An OpenAI stream the client did not ask usage for: the upstream says none.
    data = b"".join(upstream._chat_completion_events(upstream.Request(
        "/v1/chat/completions", Message(), {"model": "m1", "messages": CHAT, "stream": True})))
    assert b"_tokens" not in data  # nothing reported
    events = data.count(b"data:")  # a chunk per token, the role's, the stop's, [DONE]
    sizes = sorted({*range(1, 40), 97, 4096, len(data)})
    # An output token per event, an input token per 4 bytes of the request.
    assert set(_scan(lua, [(size, data) for size in sizes], request_bytes=401)) == {
        (101, events, "m1")}


@pytest.mark.parametrize("lua", ["lua5.3", "lua5.4"])
def test_a_stream_cut_short_is_charged_what_it_sent(lua: str) -> None:
    # Anthropic's stream reports its input first and its output last: cut
    # before the end, the input is as reported and the output estimated.
    data, (used_in, _) = _answer("/v1/messages", {"model": "m3", "max_tokens": 9,
                                                 "messages": CHAT, "stream": True},
                                 anthropic=True)
    cut = data[:data.index(b"event: message_delta")]
    assert set(_scan(lua, [(size, cut) for size in (1, 7, 64, len(cut))], 4000)) == {
        (used_in, cut.count(b"data:"), "m3")}
    # Not a stream (one line), nothing reported: no LLM call, nothing made up.
    assert _scan(lua, [(5, b'{"models": []}')], 4000) == [(0, 0, "-")]
