"""Plain HTTP requests to the gateway, as curl would send them."""

from __future__ import annotations

import http.client
import json

from spoa_agent.demo.stack import Gateway


def request(gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None,
            source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """To the gateway; `source`: the loopback address to send from (127.0.0.x),
    as another client."""
    return http_request(gw.gateway_port, method, path, headers, body, source)


def http_request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None,
                 source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to a loopback port: status, lower-cased headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_message(body: bytes) -> str:
    """The message of a refusal, whichever API dialect it is in (Ollama's
    {"error": "..."}, OpenAI's and Anthropic's {"error": {"message": ...}})."""
    error = json.loads(body)["error"]
    message = error if isinstance(error, str) else error["message"]
    assert isinstance(message, str) and message
    return message


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
