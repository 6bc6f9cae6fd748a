"""The gate decides on the request HAProxy forwards: attacks that read the
same request two ways (HAProxy, the agent, the upstream), through real
HAProxy 2.6 and 2.8, asserting what reached the upstreams (they record every
request), not only the status the client saw."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway
from tests.conftest import EXAMPLE_CONFIG, OWN_LOGIN_ROUTE
from tests.e2e.client import bearer, request
from tests.e2e.conftest import create_key
from tests.fail2ban.helpers import banned_addresses

SMALL_BODY_ROUTE = """
[[routes]]
name = "small"
path = "/small"
methods = ["POST"]
max_body = "1k"
"""
MODEL = "llama3.2:1b"


@pytest.fixture
def gate(haproxy: str, tmp_path: Path) -> Iterator[Gateway]:
    """The shipped haproxy.cfg and hosts.map, the example policy plus the
    README's OpenWebUI route on chat.example.com, and two upstreams: the AI
    backend ("upstream") and OpenWebUI ("openwebui")."""
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + OWN_LOGIN_ROUTE + SMALL_BODY_ROUTE)
    gw = Gateway(tmp_path / "gw")
    gw.workdir.mkdir()
    try:
        gw.start_redis()
        gw.start_upstream()
        gw.start_openwebui()
        gw.start_agent(config)
        gw.start_haproxy(haproxy)
        yield gw
    finally:
        gw.stop()


def raw_request(gw: Gateway, data: bytes) -> int:
    """Send `data` as it is (framing the http.client would not send); the status."""
    with socket.create_connection(("127.0.0.1", gw.gateway_port), timeout=10) as sock:
        sock.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def reached(gw: Gateway, path: str, upstream: str = "upstream") -> list[dict[str, object]]:
    return [r for r in gw.upstream_requests(upstream)
            if str(r["target"]).split("?")[0] == path]


@pytest.mark.parametrize("host", [
    "chat.example.com.", "chat.example.com..", "CHAT.EXAMPLE.COM.", "chat.example.com.:8080",
    "Chat.Example.Com.:443", "chat..example.com", "chat.example.com:80.", ".chat.example.com",
    "chat.example.com%2e", "chat_example.com", "",
])
def test_no_spelling_of_an_own_login_host_opens_the_ai_backend(gate: Gateway,
                                                                host: str) -> None:
    status, headers, _ = request(gate, "POST", "/api/pull", {"Host": host}, b"{}")
    assert status == 400, (host, status)
    assert reached(gate, "/api/pull") == [] and reached(gate, "/api/pull", "openwebui") == []
    assert "x-upstream-saw" not in headers


def test_the_own_login_host_in_its_spellings_reaches_only_openwebui(gate: Gateway) -> None:
    for host in ("chat.example.com", "CHAT.Example.com", "chat.example.com:8080"):
        status, _, _ = request(gate, "POST", "/api/pull", {"Host": host}, b"{}")
        assert status == 200, host
    assert len(reached(gate, "/api/pull", "openwebui")) == 3
    assert reached(gate, "/api/pull") == []  # the AI backend never saw one
    # Elsewhere a key is needed, and /api/pull is blocked even with one.
    assert request(gate, "POST", "/api/pull", {"Host": "ollama.example.com"}, b"{}")[0] == 401


def test_absolute_uri_and_duplicate_hosts_cannot_pick_another_site(gate: Gateway) -> None:
    assert raw_request(gate, b"POST http://chat.example.com/api/pull HTTP/1.1\r\n"
                             b"Host: ollama.example.com\r\nContent-Length: 2\r\n\r\n{}") == 400
    assert raw_request(gate, b"POST /api/pull HTTP/1.1\r\nHost: chat.example.com\r\n"
                             b"Host: ollama.example.com\r\nContent-Length: 2\r\n\r\n{}") == 400
    assert reached(gate, "/api/pull") == []


def _chat(model_json: bytes) -> bytes:
    return b'{"messages":[{"role":"user","content":"hi"}],' + model_json + b"}"


AMBIGUOUS_MODELS = [
    b'"model":"llama3.2:1b","model":"qwen2.5:72b"',
    b'"model":"qwen2.5:72b","model":"llama3.2:1b"',
    b'"model":"llama3.2:1b","Model":"qwen2.5:72b"',
    b'"model":"llama3.2:1b","MODEL":"qwen2.5:72b"',
    b'"model":"llama3.2:1b","mod\\u0065l":"qwen2.5:72b"',
    b'"model":"llama3.2:1b","\\u006dodel":"qwen2.5:72b"',
    b'"model":"llama3.2:1b","mode\\u017f":"x","MODE\\u212a":"y","Mode\\u004c":"qwen2.5:72b"',
    b'"Model":"qwen2.5:72b"',
    b'"model":["llama3.2:1b"]',
]


@pytest.mark.parametrize("model_json", AMBIGUOUS_MODELS)
def test_a_body_read_two_ways_is_refused(gate: Gateway, model_json: bytes) -> None:
    key = str(create_key(gate, "--name", "one-model", "--model", MODEL)["token"])
    status, _, _ = request(gate, "POST", "/api/chat", bearer(key), _chat(model_json))
    assert status == 400
    assert reached(gate, "/api/chat") == []


def test_a_second_model_past_the_buffer_or_a_body_of_unknown_size_is_refused(
        gate: Gateway) -> None:
    key = str(create_key(gate, "--name", "one-model", "--model", MODEL)["token"])
    past_buffer = (b'{"model":"llama3.2:1b","messages":"' + b"x" * 20000
                   + b'","model":"qwen2.5:72b"}')
    assert request(gate, "POST", "/api/chat", bearer(key), past_buffer)[0] == 413
    body = _chat(b'"model":"qwen2.5:72b"')
    chunked = (b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode()
               + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert raw_request(gate, chunked) == 411
    gzipped = gzip.compress(body)
    assert request(gate, "POST", "/api/chat", {**bearer(key), "Content-Encoding": "gzip"},
                   gzipped)[0] == 415
    assert reached(gate, "/api/chat") == []
    # The plain request with the allowed model still passes, whole.
    good = _chat(b'"model":"llama3.2:1b"')
    assert request(gate, "POST", "/api/chat", bearer(key), good)[0] == 200
    [seen] = reached(gate, "/api/chat")
    assert seen["body"] == good.decode() and seen["body_len"] == len(good)


def test_max_body_holds_for_every_framing(gate: Gateway, ) -> None:
    key = str(create_key(gate, "--name", "sizes")["token"])
    head = b"POST /small HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
    big = b"x" * 5000
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    assert raw_request(gate, chunked) == 411
    both = (head + b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    assert raw_request(gate, both) == 411
    assert request(gate, "POST", "/small", bearer(key), big)[0] == 413
    assert reached(gate, "/small") == []
    small = b"y" * 1000
    request(gate, "POST", "/small", bearer(key), small)
    [seen] = reached(gate, "/small")
    assert seen["body_len"] == 1000


def test_identity_headers_of_the_client_never_reach_the_upstream(gate: Gateway) -> None:
    key = str(create_key(gate, "--name", "honest")["token"])
    forged = {"X_Spoa_Principal": "admin", "x-spoa-principal": "admin", "X-SPOA-User": "root",
              "X_Api_Key": "spoa_leak", **bearer(key)}
    assert request(gate, "GET", "/api/tags", forged)[0] == 200
    [seen] = reached(gate, "/api/tags")
    names = {str(name).lower().replace("_", "-"): value for name, value in seen["headers"]}
    assert names["x-spoa-principal"] == "honest"  # the gateway's own, once
    assert [n for n, _ in seen["headers"] if "spoa" in str(n).lower()] == ["x-spoa-principal"]
    assert "authorization" not in names and "x-api-key" not in names


def test_gateway_trouble_is_never_blamed_on_the_client(gate: Gateway) -> None:
    key = str(create_key(gate, "--name", "valid")["token"])
    gate.processes["redis"].stop()
    for _ in range(3):
        assert request(gate, "GET", "/api/tags", bearer(key))[0] == 503
    lines = [json.loads(line) for line in gate.processes["agent"].log().splitlines()
             if '"http.response.status_code":503' in line]
    assert lines and {line["event.action"] for line in lines} <= {"auth_unavailable",
                                                                  "ratelimit_unavailable"}
    assert banned_addresses(gate.processes["agent"].log_path) == []
