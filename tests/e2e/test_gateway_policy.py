"""The example policy through real HAProxy: presets pass, blocked endpoints
and unlisted paths get 403, a key limited to one model is refused another."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, gateway
from spoa_agent.policy import preset_routes
from tests.conftest import EXAMPLE_CONFIG, OWN_LOGIN_ROUTE
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key

ALLOWED = [(method, route.path.replace("{model}", "llama3.2:1b"))
           for name in ("ollama-safe", "openai", "anthropic")
           for route in preset_routes(name) for method in sorted(route.methods)]
BLOCKED = [("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
           ("POST", "/api/push"), ("POST", "/api/copy"), ("GET", "/api/ps"),
           ("GET", "/metrics"), ("POST", "/api/chat/"), ("POST", "//api/pull"),
           ("POST", "/api/pull?x=1"), ("POST", "/api/%70ull"), ("POST", "/API/PULL"),
           ("POST", "/v1/../api/pull"), ("POST", "/api/pull/")]


def test_every_preset_endpoint_passes_and_every_other_is_refused(gw: Gateway,
                                                                  key: str) -> None:
    for method, path in ALLOWED:
        status, headers, _ = request(gw, method, path, bearer(key),
                                     b'{"model":"llama3.2:1b"}' if method == "POST" else None)
        assert "x-upstream-saw" in headers, (method, path, status)  # reached the upstream
    for method, path in BLOCKED:
        status, _, body = request(gw, method, path, bearer(key), b"{}")
        assert status == 403, (method, path)
        assert "not exposed" in error_message(body) or "must not contain" in error_message(body)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/v1/messages"])
def test_a_key_limited_to_one_model(gw: Gateway, path: str) -> None:
    key = str(create_key(gw, "--name", "one-model", "--model", "llama3.2:1b")["token"])
    allowed = request(gw, "POST", path, bearer(key),
                      b'{"messages":[{"role":"user","content":"hi"}],"model":"llama3.2:1b"}')
    assert "x-upstream-saw" in allowed[1]
    status, _, body = request(gw, "POST", path, bearer(key),
                              b'{"messages":[],"model":"qwen2.5:72b"}')
    assert status == 403
    assert "'qwen2.5:72b' is not allowed for this API key" in error_message(body)
    assert request(gw, "POST", path, bearer(key), b'{"messages":[]}')[0] == 400
    assert request(gw, "POST", path, bearer(key), b"not json")[0] == 400
    big = b'{"messages":"' + b"x" * 40000 + b'","model":"llama3.2:1b"}'
    assert request(gw, "POST", path, bearer(key), big)[0] == 413
    log = gw.processes["agent"].log()
    assert '"event.reason":"model_not_allowed"' in log and '"detail":"qwen2.5:72b"' in log


def test_own_login_host_keeps_its_credentials(haproxy: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + OWN_LOGIN_ROUTE)
    with gateway(tmp_path / "gw", haproxy, config) as gw:
        own = {"Host": "chat.example.com", "Authorization": "Bearer openwebui-session"}
        status, headers, _ = request(gw, "GET", "/api/tags", own)
        assert status == 200
        assert "authorization" in headers["x-upstream-saw"].split(",")  # its own login
        # Elsewhere a key is still required, and credentials are still removed.
        assert request(gw, "GET", "/api/tags", {"Host": "gw.example.com"})[0] == 401
        # A dotted path never rides the own-login prefix to the upstream.
        status, headers, _ = request(gw, "GET", "/../api/pull", {"Host": "chat.example.com"})
        assert status in (401, 403) and "x-upstream-saw" not in headers


SCOPED_PULL = """
[[routes]]
name = "ollama-pull"
path = "/api/pull"
methods = ["POST"]
scopes = ["models:manage"]
"""


def test_a_scoped_route_needs_the_scope(haproxy: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + SCOPED_PULL)
    with gateway(tmp_path / "gw", haproxy, config) as gw:
        plain = str(create_key(gw, "--name", "plain")["token"])
        status, headers, body = request(gw, "POST", "/api/pull", bearer(plain), b"{}")
        assert status == 403
        # RFC 6750 3.1: the scope the client would need.
        assert headers["www-authenticate"] == (
            'Bearer realm="spoa-agent", error="insufficient_scope", scope="models:manage"')
        assert error_message(body) == ("this API key lacks the scope this endpoint needs: "
                                       "models:manage")
        admin = str(create_key(gw, "--name", "admin", "--scope", "models:manage")["token"])
        status, headers, _ = request(gw, "POST", "/api/pull", bearer(admin), b"{}")
        assert status == 200 and "x-upstream-saw" in headers
