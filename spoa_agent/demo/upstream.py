"""A small upstream that answers like an Ollama host, for the demo and tests.

It also reports what reached it (header `X-Upstream-Saw` lists the request's
header names) so tests can check that credentials never get past HAProxy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "llama3.2:1b"

_GET = {
    "/api/version": {"version": "0.5.7"},
    "/api/tags": {"models": [{"name": MODEL, "model": MODEL, "size": 1321098329}]},
    "/v1/models": {"object": "list", "data": [{"id": MODEL, "object": "model",
                                               "owned_by": "library"}]},
}


def _chat_completion() -> dict[str, object]:
    return {
        "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello from the upstream."}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
    }


_POST: dict[str, Callable[[], dict[str, object]]] = {
    "/v1/chat/completions": _chat_completion,
    "/api/chat": lambda: {"model": MODEL, "message": {"role": "assistant",
                                                      "content": "Hello from the upstream."},
                          "done": True},
    "/api/generate": lambda: {"model": MODEL, "response": "Hello from the upstream.",
                              "done": True},
    # Reachable only if the gateway lets it through: tests look for this.
    "/api/pull": lambda: {"status": "success"},
}


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-ollama"

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Upstream-Saw", ",".join(sorted(k.lower() for k in self.headers)))
        principal = self.headers.get("X-Spoa-Principal")
        if principal:
            self.send_header("X-Upstream-Principal", principal)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = _GET.get(path)
        if body is None and path.startswith("/v1/models/"):
            body = {"id": path.rsplit("/", 1)[1], "object": "model", "owned_by": "library"}
        self._answer(200 if body else 404, body or {"error": "not found"})

    def do_POST(self) -> None:
        # Tests of requests in flight ask for a slow answer.
        time.sleep(min(float(self.headers.get("X-Upstream-Delay") or 0), 10.0))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        make = _POST.get(self.path.split("?", 1)[0])
        self._answer(200 if make else 404, make() if make else {"error": "not found"})

    def log_message(self, format: str, *args: object) -> None:
        pass  # the demo prints its own story; HAProxy logs every request


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of connections from
    # HAProxy would wait for SYN retransmits (1 s, 3 s, ...).
    request_queue_size = 1024

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy closing an idle keep-alive connection is not news


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:11434")
    ns = parser.parse_args()
    host, _, port = ns.listen.rpartition(":")
    server = UpstreamServer((host, int(port)), UpstreamHandler)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
