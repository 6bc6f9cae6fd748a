"""The demo upstream, driven by the official SDKs as the gateway's users drive it."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import anthropic
import ollama
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from spoa_agent.demo.upstream import (
    MODEL,
    TEXT,
    USAGE_OUT,
    UpstreamHandler,
    UpstreamServer,
    websocket_accept,
)
from tests.e2e.client import http_request
from tests.websocket import recv_exact, ws_recv, ws_send, ws_upgrade


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = UpstreamServer(("127.0.0.1", 0), UpstreamHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def openai_client(port: int) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                       max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(port: int) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x",
                             max_retries=0) as client:
        yield client


@pytest.fixture
def ollama_client(port: int) -> Iterator[ollama.Client]:
    with ollama.Client(host=f"http://127.0.0.1:{port}") as client:
        yield client


CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
MESSAGES: list[MessageParam] = [{"role": "user", "content": "hi"}]
OLLAMA = [{"role": "user", "content": "hi"}]


# --- Plain HTTP ------------------------------------------------------------------------

def test_root_answers_the_health_check(port: int) -> None:
    status, headers, body = http_request(port, "GET", "/")
    assert (status, body) == (200, b"Ollama is running")
    assert headers["content-type"].startswith("text/plain")
    assert http_request(port, "GET", "/health")[0] == 200
    status, headers, body = http_request(port, "HEAD", "/")
    assert (status, body, headers["content-length"]) == (200, b"", "17")


def test_reports_what_reached_it(port: int) -> None:
    _, headers, _ = http_request(port, "GET", "/api/tags",
                                 headers={"X-Spoa-Principal": "alice", "X-Custom": "1"})
    assert headers["x-upstream-principal"] == "alice"
    saw = headers["x-upstream-saw"].split(",")
    assert saw == sorted(saw)
    assert {"x-spoa-principal", "x-custom", "host"} <= set(saw)


def test_unknown_path_is_404(port: int) -> None:
    status, _, body = http_request(port, "GET", "/nope")
    assert (status, json.loads(body)) == (404, {"error": "not found"})
    assert http_request(port, "DELETE", "/api/delete", body=b"{}")[0] == 404


@pytest.mark.parametrize(("body", "headers"), [
    (b"{not json", {}),
    (b"[1, 2]", {}),
    (b"\xff\xfe", {}),
    (b"{}", {"X-Upstream-Chunk-Delay": "soon"}),
    (b"{}", {"X-Upstream-Delay": "nan"}),
])
def test_bad_request_is_a_json_400(port: int, body: bytes, headers: dict[str, str]) -> None:
    status, answer_headers, answer = http_request(port, "POST", "/api/chat", headers, body)
    assert status == 400
    assert answer_headers["content-type"] == "application/json"
    assert "bad request" in json.loads(answer)["error"]


def test_chunked_request_body_is_decoded(port: int) -> None:
    body = json.dumps({"model": "chunky:1b", "stream": False}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # An iterator with no length: http.client sends it chunked.
        conn.request("POST", "/api/chat", body=iter([body[:7], body[7:]]))
        resp = conn.getresponse()
        status, saw, answer = resp.status, resp.getheader("X-Upstream-Saw", ""), resp.read()
    finally:
        conn.close()
    assert status == 200
    assert "transfer-encoding" in saw.split(",")
    assert json.loads(answer)["model"] == "chunky:1b"


def test_keep_alive_survives_a_streamed_answer(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(2):
            conn.request("POST", "/api/generate", body=b'{"prompt": "hi"}')
            resp = conn.getresponse()
            lines = [json.loads(line) for line in resp.read().splitlines()]
            assert "".join(line["response"] for line in lines) == TEXT
    finally:
        conn.close()


def test_delay_before_answering_a_post(port: int) -> None:
    start = time.monotonic()
    http_request(port, "POST", "/api/pull", {"X-Upstream-Delay": "0.3"}, b"")
    assert time.monotonic() - start >= 0.25


# --- OpenAI ----------------------------------------------------------------------------

def test_openai_models(openai_client: openai.OpenAI) -> None:
    assert [m.id for m in openai_client.models.list()] == [MODEL]
    assert openai_client.models.retrieve(MODEL).id == MODEL


def test_openai_chat(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(model=MODEL, messages=CHAT)
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"


def test_openai_chat_streamed(openai_client: openai.OpenAI) -> None:
    with openai_client.chat.completions.create(
            model=MODEL, messages=CHAT, stream=True,
            stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage  # asked for: the last chunk, with no choices
    assert usage is not None and usage.completion_tokens >= USAGE_OUT
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_responses(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(model=MODEL, input="hi")
    assert response.output_text == TEXT
    assert response.status == "completed"


def test_openai_responses_streamed(openai_client: openai.OpenAI) -> None:
    with openai_client.responses.stream(model=MODEL, input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TEXT
    assert final.output_text == TEXT


# --- Anthropic -------------------------------------------------------------------------

def test_anthropic_models(anthropic_client: anthropic.Anthropic) -> None:
    models = list(anthropic_client.models.list())
    assert [(m.id, m.type) for m in models] == [(MODEL, "model")]
    assert anthropic_client.models.retrieve(MODEL).display_name == MODEL


def test_anthropic_message(anthropic_client: anthropic.Anthropic) -> None:
    message = anthropic_client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    assert [block.text for block in message.content if block.type == "text"] == [TEXT]
    assert message.stop_reason == "end_turn"


def test_anthropic_message_streamed(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(model=MODEL, max_tokens=16,
                                          messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens >= USAGE_OUT and final.usage.input_tokens > 0


def test_anthropic_create_stream_events(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES,
                                          stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 4,
                     "content_block_stop", "message_delta", "message_stop"]


# --- Ollama ----------------------------------------------------------------------------

def test_ollama_list_show_version(ollama_client: ollama.Client, port: int) -> None:
    assert [m.model for m in ollama_client.list().models] == [MODEL]
    shown = ollama_client.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama"
    assert [m.model for m in ollama_client.ps().models] == [MODEL]
    # The SDK has no version(); OpenWebUI asks for it all the same.
    assert "version" in json.loads(http_request(port, "GET", "/api/version")[2])


def test_ollama_chat(ollama_client: ollama.Client) -> None:
    answer = ollama_client.chat(model=MODEL, messages=OLLAMA)
    assert answer.message.content == TEXT
    assert (answer.done, answer.done_reason) == (True, "stop")


def test_ollama_chat_streamed(ollama_client: ollama.Client) -> None:
    parts = list(ollama_client.chat(model=MODEL, messages=OLLAMA, stream=True))
    assert "".join(p.message.content or "" for p in parts) == TEXT
    assert [p.done for p in parts] == [False] * 4 + [True]


def test_ollama_generate(ollama_client: ollama.Client) -> None:
    assert ollama_client.generate(model=MODEL, prompt="hi").response == TEXT
    parts = list(ollama_client.generate(model=MODEL, prompt="hi", stream=True))
    assert "".join(p.response or "" for p in parts) == TEXT


def test_ollama_streams_by_default(port: int) -> None:
    status, headers, body = http_request(port, "POST", "/api/chat", body=b'{"model": "x"}')
    assert status == 200
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


def test_ollama_embed(ollama_client: ollama.Client) -> None:
    embeddings = ollama_client.embed(model=MODEL, input=["a", "b", "a"]).embeddings
    assert len(embeddings) == 3
    assert embeddings[0] == embeddings[2] != embeddings[1]
    assert len(ollama_client.embeddings(model=MODEL, prompt="a").embedding) > 0


# --- Streaming pace --------------------------------------------------------------------

def timed_chunks(sock: socket.socket) -> tuple[bytes, list[tuple[float, bytes]]]:
    """Read a chunked answer: its head, and each chunk with the time it was complete."""
    buffer, chunks = b"", list[tuple[float, bytes]]()
    while b"\r\n\r\n" not in buffer:
        buffer += recv_exact(sock, 1)
    head, buffer = buffer, b""
    while True:
        size_line, crlf, rest = buffer.partition(b"\r\n")
        size = int(size_line, 16) if crlf else -1
        if crlf and len(rest) >= size + 2:
            if size == 0:
                return head, chunks
            chunks.append((time.monotonic(), rest[:size]))
            buffer = rest[size + 2:]
            continue
        more = sock.recv(65536)
        assert more, "closed before the last chunk"
        buffer += more


def test_chunks_arrive_as_they_are_made(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"X-Upstream-Chunk-Delay: 0.3\r\nContent-Length: 16\r\n\r\n"
                     b'{"stream": true}')
        head, chunks = timed_chunks(sock)
    finally:
        sock.close()
    assert b"Transfer-Encoding: chunked" in head
    assert b"Content-Length" not in head
    # Four words, the chunk that says "stop", then [DONE]: one HTTP chunk each.
    assert [data.startswith(b"data: ") for _, data in chunks] == [True] * 6
    assert chunks[-1][1] == b"data: [DONE]\n\n"
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(chunks)]
    assert all(gap >= 0.25 for gap in gaps), gaps


# --- WebSocket -------------------------------------------------------------------------

def test_websocket_echo(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        status, headers, key = ws_upgrade(sock, "/ws/socket.io/?EIO=4&transport=websocket",
                                          {"Host": "x", "X-Spoa-Principal": "bob"})
        assert status.startswith("HTTP/1.1 101")
        assert headers["sec-websocket-accept"] == websocket_accept(key)
        assert "sec-websocket-key" in headers["x-upstream-saw"].split(",")
        assert headers["x-upstream-principal"] == "bob"

        for opcode, payload in [(1, b"40"), (2, bytes(range(256)) * 2), (1, b"x" * 70000)]:
            ws_send(sock, opcode, payload)
            assert ws_recv(sock) == (opcode, payload)
        ws_send(sock, 0x9, b"ping?")
        assert ws_recv(sock) == (0xA, b"ping?")
        ws_send(sock, 0x8, struct.pack("!H", 1000))
        assert ws_recv(sock) == (0x8, struct.pack("!H", 1000))
        assert sock.recv(1) == b""  # the server closes after the close handshake
    finally:
        sock.close()


def test_websocket_accept_matches_rfc_6455() -> None:
    # The example handshake of RFC 6455 section 1.3.
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
