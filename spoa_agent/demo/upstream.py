"""A small upstream that answers like an Ollama host, for the demo and tests.

It speaks enough of three APIs for their official SDKs (`openai`, `anthropic`,
`ollama`) to work against it, streamed or not, and echoes WebSocket frames
(OpenWebUI's socket.io) so tests can check that HAProxy passes upgrades:

    GET  /, /health                 "Ollama is running": HAProxy's health check
    GET  /v1/models[/{id}]          OpenAI's format, Anthropic's with `anthropic-version`
    POST /v1/chat/completions       OpenAI chat; SSE chunks when "stream": true
    POST /v1/responses              OpenAI Responses; SSE events when "stream": true
    POST /v1/messages               Anthropic Messages; SSE events when "stream": true
    GET  /api/tags, /api/version, /api/ps
    POST /api/show, /api/embed, /api/embeddings, /api/pull
    POST /api/chat, /api/generate   NDJSON lines unless "stream": false (Ollama's default)
    GET  any path + Upgrade: websocket   101, then echo every frame until close

Every answer reports what reached the upstream, so tests can check that
credentials never get past HAProxy: `X-Upstream-Saw` lists the request's header
names (lowercased, sorted), `X-Upstream-Principal` echoes `X-Spoa-Principal`.
With `--record FILE`, every request that reached the upstream is appended
to FILE as one JSON line (method, target, headers in order, body length and
the body's first bytes), so tests assert what got past the gateway, not only
the status the client saw. Request headers that shape the answer, for tests:

    X-Upstream-Delay: <s>         sleep before answering a POST (requests in flight)
    X-Upstream-Chunk-Delay: <s>   sleep between the chunks of a streamed answer

Each streamed event is one HTTP/1.1 chunk, written to the socket as soon as
it is made, so a test can see whether the proxy holds chunks back.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import math
import os
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any

MODEL = "llama3.2:1b"
WORDS = ("Hello", " from", " the", " upstream.")
TEXT = "".join(WORDS)
CREATED_AT = "2025-01-01T00:00:00Z"  # fixed: answers stay comparable between runs
USAGE_OUT = 5  # the base of the output tokens reported (Request.usage)
MAX_DELAY = 10.0  # seconds: a typo in a test must not hang the suite
MAX_BODY = 16 << 20  # bytes, request bodies and WebSocket frames alike
RECORD_BODY = 4096  # bytes of each request body kept by --record

JSON = dict[str, Any]


class BadRequest(Exception):
    """Answered 400 with the message: never a traceback or a hung connection."""


@dataclass(frozen=True)
class Request:
    path: str  # without the query string
    headers: Message
    body: JSON  # the JSON body of a POST, else empty
    # The token counts the answer reported, once it did (--record writes them).
    reported: list[tuple[int, int]] = field(default_factory=list)

    @property
    def usage(self) -> tuple[int, int]:
        """The (input, output) tokens this request is said to use: made up,
        but different from one request to the next, so that sums count."""
        digest = hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).digest()
        return 3 + digest[0] % 200, USAGE_OUT + digest[1] % 100

    def report(self) -> tuple[int, int]:
        """The usage, noted as reported by this answer."""
        if not self.reported:
            self.reported.append(self.usage)
        return self.reported[0]

    @property
    def model(self) -> str:
        # Echo the model asked for, as real servers do: tests may route on it.
        model = self.body.get("model")
        return model if isinstance(model, str) and model else MODEL

    def streams(self, default: bool) -> bool:
        stream = self.body.get("stream", default)
        return stream if isinstance(stream, bool) else default

    @property
    def anthropic(self) -> bool:
        # The Anthropic SDK always sends it; the OpenAI SDK never does.
        return "anthropic-version" in self.headers


@dataclass(frozen=True)
class Reply:
    """A whole answer: JSON, or text/plain when `body` is a str."""

    body: object
    status: int = 200


@dataclass(frozen=True)
class Stream:
    """A streamed answer: each event goes out as one chunk, flushed at once."""

    media_type: str
    events: Iterable[bytes]


Route = Callable[[Request], Reply | Stream]


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _typed_sse(events: Iterable[JSON]) -> Iterator[bytes]:
    """Anthropic and OpenAI Responses events: the `event:` line repeats `type`."""
    for event in events:
        yield _sse(event, event["type"])


# --- Models: one list, two formats -----------------------------------------------------

def _openai_model(model_id: str) -> JSON:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "library"}


def _anthropic_model(model_id: str) -> JSON:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": CREATED_AT}


def _models(req: Request) -> Reply:
    if req.anthropic:
        # A page: the SDK's paginator reads has_more and the ids at both ends.
        return Reply({"data": [_anthropic_model(MODEL)], "has_more": False,
                      "first_id": MODEL, "last_id": MODEL})
    return Reply({"object": "list", "data": [_openai_model(MODEL)]})


def _model(req: Request) -> Reply:
    # Any id is known: tests ask for models HAProxy should or should not let by.
    model_id = urllib.parse.unquote(req.path.removeprefix("/v1/models/"))
    return Reply((_anthropic_model if req.anthropic else _openai_model)(model_id))


# --- OpenAI Chat Completions -----------------------------------------------------------

def _chat_chunk(model: str, delta: JSON, finish: str | None = None) -> JSON:
    return {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _openai_usage(req: Request) -> JSON:
    used_in, used_out = req.report()
    return {"prompt_tokens": used_in, "completion_tokens": used_out,
            "total_tokens": used_in + used_out}


def _chat_completion_events(req: Request) -> Iterator[bytes]:
    for i, word in enumerate(WORDS):
        # The role comes once, in the first delta, as OpenAI sends it.
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        yield _sse(_chat_chunk(req.model, delta))
    yield _sse(_chat_chunk(req.model, {}, "stop"))
    options = req.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield _sse({**_chat_chunk(req.model, {}), "choices": [], "usage": _openai_usage(req)})
    yield b"data: [DONE]\n\n"


def _chat_completion(req: Request) -> Reply | Stream:
    if req.streams(default=False):
        return Stream("text/event-stream", _chat_completion_events(req))
    return Reply({
        "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": req.model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": TEXT}}],
        "usage": _openai_usage(req),
    })


# --- OpenAI Responses ------------------------------------------------------------------

def _response_item(text: str, status: str) -> JSON:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": "msg_demo", "type": "message", "role": "assistant", "status": status,
            "content": content if status == "completed" else []}


def _response(req: Request, status: str = "completed") -> JSON:
    done = status == "completed"
    model = req.model
    used_in, used_out = req.report() if done else (0, 0)
    return {
        "id": "resp_demo", "object": "response", "created_at": 0, "status": status,
        "model": model, "output": [_response_item(TEXT, status)] if done else [],
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "temperature": None, "top_p": None,
        "usage": {"input_tokens": used_in, "output_tokens": used_out,
                  "total_tokens": used_in + used_out,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}} if done else None,
    }


def _response_events(req: Request) -> Iterator[JSON]:
    # The order client.responses.stream() checks: each part is opened before use.
    at = {"item_id": "msg_demo", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield {"type": "response.created", "response": _response(req, "in_progress")}
    yield {"type": "response.in_progress", "response": _response(req, "in_progress")}
    yield {"type": "response.output_item.added", "output_index": 0,
           "item": _response_item("", "in_progress")}
    yield {"type": "response.content_part.added", **at, "part": part}
    for word in WORDS:
        yield {"type": "response.output_text.delta", **at, "delta": word, "logprobs": []}
    yield {"type": "response.output_text.done", **at, "text": TEXT, "logprobs": []}
    yield {"type": "response.content_part.done", **at, "part": {**part, "text": TEXT}}
    yield {"type": "response.output_item.done", "output_index": 0,
           "item": _response_item(TEXT, "completed")}
    yield {"type": "response.completed", "response": _response(req)}


def _responses(req: Request) -> Reply | Stream:
    if req.streams(default=False):
        numbered = ({**event, "sequence_number": n}
                    for n, event in enumerate(_response_events(req)))
        return Stream("text/event-stream", _typed_sse(numbered))
    return Reply(_response(req))


# --- Anthropic Messages ----------------------------------------------------------------

def _message(req: Request, content: list[JSON], stop: str | None, output_tokens: int) -> JSON:
    return {"id": "msg_demo", "type": "message", "role": "assistant", "model": req.model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": req.report()[0], "output_tokens": output_tokens}}


def _message_events(req: Request) -> Iterator[JSON]:
    # As Anthropic streams: input tokens (and 1 output) in message_start, the
    # output's running total in message_delta.
    yield {"type": "message_start", "message": _message(req, [], None, 1)}
    yield {"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}}
    for word in WORDS:
        yield {"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": word}}
    yield {"type": "content_block_stop", "index": 0}
    yield {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": req.report()[1]}}
    yield {"type": "message_stop"}


def _messages(req: Request) -> Reply | Stream:
    if req.streams(default=False):
        return Stream("text/event-stream", _typed_sse(_message_events(req)))
    return Reply(_message(req, [{"type": "text", "text": TEXT}], "end_turn", req.report()[1]))


# --- Ollama ----------------------------------------------------------------------------

_DETAILS = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
            "parameter_size": "1.2B", "quantization_level": "Q8_0"}
_TAG = {"name": MODEL, "model": MODEL, "modified_at": CREATED_AT, "size": 1321098329,
        "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
        "details": _DETAILS}


def _done(req: Request) -> JSON:
    used_in, used_out = req.report()
    return {"done": True, "done_reason": "stop", "total_duration": 1000, "load_duration": 10,
            "prompt_eval_count": used_in, "prompt_eval_duration": 10,
            "eval_count": used_out, "eval_duration": 900}


def _ollama(req: Request, part: Callable[[str], JSON]) -> Reply | Stream:
    """Ollama streams unless told "stream": false: a JSON line a word, then a done line."""
    head = {"model": req.model, "created_at": CREATED_AT}
    if not req.streams(default=True):
        return Reply({**head, **part(TEXT), **_done(req)})
    lines = [{**head, **part(word), "done": False} for word in WORDS]
    lines.append({**head, **part(""), **_done(req)})
    return Stream("application/x-ndjson", (json.dumps(line).encode() + b"\n" for line in lines))


def _embedding(text: object) -> list[float]:
    # From the text's hash: the same text always gets the same vector, as caches expect.
    digest = hashlib.sha256(str(text).encode()).digest()
    return [round(b / 255 * 2 - 1, 4) for b in digest[:8]]


def _embed(req: Request) -> Reply:
    given = req.body.get("input", "")
    texts = given if isinstance(given, list) else [given]
    req.reported.append((len(texts), 0))
    return Reply({"model": req.model, "embeddings": [_embedding(t) for t in texts],
                  "total_duration": 1000, "load_duration": 10, "prompt_eval_count": len(texts)})


def _show(req: Request) -> Reply:
    # The SDK's ShowResponse requires "model_info" (its only field with no default).
    return Reply({"modelfile": f"FROM {req.model}\n", "parameters": "", "template": "{{ .Prompt }}",
                  "details": _DETAILS, "model_info": {"general.architecture": "llama"},
                  "capabilities": ["completion"], "modified_at": CREATED_AT})


def _answer(body: object) -> Route:
    return lambda _req: Reply(body)


# (method, path) -> route. HEAD answers like GET, without the body.
_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): _answer("Ollama is running"),
    ("GET", "/health"): _answer({"status": "ok"}),
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/chat/completions"): _chat_completion,
    ("POST", "/v1/responses"): _responses,
    ("POST", "/v1/messages"): _messages,
    ("GET", "/api/version"): _answer({"version": "0.5.7"}),
    ("GET", "/api/tags"): _answer({"models": [_TAG]}),
    ("GET", "/api/ps"): _answer({"models": [{**_TAG, "expires_at": CREATED_AT,
                                             "size_vram": 0, "context_length": 4096}]}),
    ("POST", "/api/show"): _show,
    ("POST", "/api/embed"): _embed,
    ("POST", "/api/embeddings"): lambda req: Reply(
        {"embedding": _embedding(req.body.get("prompt", ""))}),
    ("POST", "/api/chat"): lambda req: _ollama(
        req, lambda text: {"message": {"role": "assistant", "content": text}}),
    ("POST", "/api/generate"): lambda req: _ollama(req, lambda text: {"response": text}),
    # Reachable only if the gateway lets it through: tests look for this.
    ("POST", "/api/pull"): _answer({"status": "success"}),
}
# Paths with an id at the end: (method, prefix) -> route.
_PREFIX_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/models/"): _model,
}


def _route(method: str, path: str) -> Route | None:
    method = "GET" if method == "HEAD" else method
    if (method, path) in _ROUTES:
        return _ROUTES[method, path]
    return next((route for (prefix_method, prefix), route in _PREFIX_ROUTES.items()
                 if method == prefix_method and path.startswith(prefix)), None)


# --- Request parsing -------------------------------------------------------------------

def _seconds(headers: Message, name: str) -> float:
    value = headers.get(name)
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        raise BadRequest(f"{name}: not a number of seconds") from None
    if not math.isfinite(seconds):
        raise BadRequest(f"{name}: not a number of seconds")
    return min(max(seconds, 0.0), MAX_DELAY)


def _read_exact(rfile: BufferedIOBase, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) < size:
        raise BadRequest("body shorter than announced")
    return data


def _read_chunked(rfile: BufferedIOBase) -> bytes:
    body = bytearray()
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size in a chunked body") from None
        if size == 0:
            break
        if len(body) + size > MAX_BODY:
            raise BadRequest("body too large")
        body += _read_exact(rfile, size)
        rfile.readline(1024)  # the CRLF after the chunk's data
    while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
        pass  # trailer fields: nothing here needs them
    return bytes(body)


def _read_body(headers: Message, rfile: BufferedIOBase) -> bytes:
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _read_chunked(rfile)
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise BadRequest("bad Content-Length") from None
    if not 0 <= length <= MAX_BODY:
        raise BadRequest("bad Content-Length")
    return _read_exact(rfile, length)


def _json_object(data: bytes) -> JSON:
    if not data.strip():
        return {}  # `curl -X POST` with no body: tests of the policy send those
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("body is not a JSON object")
    return body


# --- WebSocket (RFC 6455) --------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# What the server sends back for each opcode it receives; None: nothing.
# Data frames keep their opcode and FIN bit, so fragmented messages echo intact.
WS_ANSWER: dict[int, int | None] = {
    WS_CONT: WS_CONT, WS_TEXT: WS_TEXT, WS_BINARY: WS_BINARY,
    WS_PING: WS_PONG, WS_PONG: None, WS_CLOSE: WS_CLOSE,
}
WS_PROTOCOL_ERROR, WS_TOO_BIG = 1002, 1009


def websocket_accept(key: str) -> str:
    """The Sec-WebSocket-Accept value that proves the server read the key."""
    digest = hashlib.sha1(key.encode() + WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def websocket_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A server frame: never masked."""
    first = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        return first + bytes([n]) + payload
    if n < 1 << 16:
        return first + bytes([126]) + struct.pack("!H", n) + payload
    return first + bytes([127]) + struct.pack("!Q", n) + payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


def _read_frame(rfile: BufferedIOBase) -> tuple[bool, int, bool, int] | None:
    """A frame's head: (FIN, opcode, masked, payload length); None at end of stream."""
    try:
        head = _read_exact(rfile, 2)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", _read_exact(rfile, 2))[0]
        elif size == 127:
            size = struct.unpack("!Q", _read_exact(rfile, 8))[0]
    except BadRequest:
        return None  # the client left, maybe mid-frame: nobody to answer
    return bool(head[0] & 0x80), head[0] & 0x0F, bool(head[1] & 0x80), size


def _websocket_echo(rfile: BufferedIOBase, send: Callable[[bytes], object]) -> None:
    """Echo frames until the client closes, leaves or breaks the protocol."""
    while frame := _read_frame(rfile):
        fin, opcode, masked, size = frame
        if size > MAX_BODY:
            send(websocket_frame(WS_CLOSE, _close_payload(WS_TOO_BIG)))
            return
        if not masked or opcode not in WS_ANSWER:
            # Clients must mask (RFC 6455 5.1); unknown opcodes are errors too.
            send(websocket_frame(WS_CLOSE, _close_payload(WS_PROTOCOL_ERROR)))
            return
        try:
            mask = _read_exact(rfile, 4)
            payload = _unmask(_read_exact(rfile, size), mask)
        except BadRequest:
            return  # cut mid-frame
        answer = WS_ANSWER[opcode]
        if answer is not None:
            send(websocket_frame(answer, payload, fin))
        if opcode == WS_CLOSE:
            return


# --- The server ------------------------------------------------------------------------

class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-ollama"

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("X-Upstream-Saw", ",".join(sorted(k.lower() for k in self.headers)))
        principal = self.headers.get("X-Spoa-Principal")
        if principal:
            self.send_header("X-Upstream-Principal", principal)
        self.end_headers()

    def _send_reply(self, reply: Reply, close: bool = False) -> None:
        if isinstance(reply.body, str):
            data, media_type = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            data, media_type = json.dumps(reply.body).encode(), "application/json"
        headers = {"Content-Type": media_type, "Content-Length": str(len(data))}
        if close:
            headers["Connection"] = "close"  # also sets self.close_connection
        self._send_head(reply.status, headers)
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_stream(self, stream: Stream, chunk_delay: float) -> None:
        # HTTP/1.0 has no chunked encoding: there the end of the body is the close.
        chunked = self.request_version != "HTTP/1.0"
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Connection": "close"}
        self._send_head(200, {"Content-Type": stream.media_type, "Cache-Control": "no-cache",
                              **framing})
        try:
            for i, event in enumerate(stream.events):
                if i:
                    time.sleep(chunk_delay)
                # One write a chunk: size line, data and CRLF leave in one segment.
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if chunked else event)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left mid-stream: nothing to tell

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key")
        if not key:
            self._send_reply(Reply({"error": "Sec-WebSocket-Key missing"}, 400), close=True)
            return
        if self.headers.get("Sec-WebSocket-Version") != "13":
            self._send_reply(Reply({"error": "unsupported WebSocket version"}, 426), close=True)
            return
        self._send_head(101, {"Upgrade": "websocket", "Connection": "Upgrade",
                              "Sec-WebSocket-Accept": websocket_accept(key.strip())})
        self.close_connection = True  # after the WebSocket, no more HTTP on this socket
        with contextlib.suppress(ConnectionError):
            _websocket_echo(self.rfile, self.wfile.write)

    def _is_websocket(self) -> bool:
        upgrade = {token.strip() for token in self.headers.get("Upgrade", "").lower().split(",")}
        return self.command == "GET" and "websocket" in upgrade

    def _record(self, raw: bytes | None, reported: tuple[int, int] | None = None) -> None:
        target = getattr(self.server, "record_to", None)
        if target is None:
            return
        line = json.dumps({
            "method": self.command, "target": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body_len": None if raw is None else len(raw),
            "body": None if raw is None else raw[:RECORD_BODY].decode("utf-8", "replace"),
            # The (input, output) tokens the answer reported, if it did.
            "usage": reported,
        }).encode() + b"\n"
        # One write per line on an O_APPEND descriptor: lines of concurrent
        # requests never interleave.
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        raw: bytes | None = None
        try:
            delay = _seconds(self.headers, "X-Upstream-Delay")
            chunk_delay = _seconds(self.headers, "X-Upstream-Chunk-Delay")
            raw = _read_body(self.headers, self.rfile)
            body = _json_object(raw) if self.command == "POST" else {}
        except BadRequest as e:
            self._record(raw)
            # The body's framing may be broken: this connection carries nothing more.
            self._send_reply(Reply({"error": f"bad request: {e}"}, 400), close=True)
            return
        if self._is_websocket():
            self._record(raw)
            self._websocket()
            return
        if self.command == "POST":
            time.sleep(delay)  # tests of requests in flight ask for a slow answer
        route = _route(self.command, path)
        request = Request(path, self.headers, body)
        reply = route(request) if route else None
        if isinstance(reply, Stream):  # its events are made as they are sent
            reply = Stream(reply.media_type, list(reply.events))
        self._record(raw, request.reported[0] if request.reported else None)
        if isinstance(reply, Stream):
            self._send_stream(reply, chunk_delay)
        else:
            self._send_reply(reply or Reply({"error": "not found"}, 404))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass  # the demo prints its own story; HAProxy logs every request


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    record_to: str | None = None  # --record
    # socketserver's default listen backlog is 5: a burst of connections from
    # HAProxy would wait for SYN retransmits (1 s, 3 s, ...).
    request_queue_size = 1024

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy closing an idle keep-alive connection is not news


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:11434")
    parser.add_argument("--record", metavar="FILE",
                        help="append every request that arrives to FILE, one JSON line each")
    ns = parser.parse_args()
    host, _, port = ns.listen.rpartition(":")
    server = UpstreamServer((host, int(port)), UpstreamHandler)
    server.record_to = ns.record
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
