"""lua/spoa_deny.lua under plain Lua 5.3 and 5.4: its own assertions
(tests/lua/test_spoa_deny.lua), then every rendered refusal parsed as JSON in
the dialect its path calls for. The same file inside real HAProxy is tested
in tests/e2e and tests/clients."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from spoa_agent.demo.stack import REPO
from spoa_agent.install.shipped import LUA_DENY

LUA_FILE = LUA_DENY
LUA_TESTS = REPO / "tests" / "lua" / "test_spoa_deny.lua"


def _render_all(lua: str) -> list[tuple[str, int, dict[str, str], dict[str, object]]]:
    if shutil.which(lua) is None:
        pytest.fail(f"{lua} is not installed: run `make deps`")
    done = subprocess.run([lua, str(LUA_TESTS), str(LUA_FILE)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    rendered = []
    for line in done.stdout.splitlines():
        path, status, headers, body = line.split("\t")
        rendered.append((path, int(status), json.loads(headers), json.loads(body)))
    return rendered


@pytest.mark.parametrize("lua", ["lua5.3", "lua5.4"])
def test_every_refusal_is_json_in_the_dialect_of_its_path(lua: str) -> None:
    rendered = _render_all(lua)
    assert len(rendered) == 36
    for path, status, headers, body in rendered:
        assert status in {400, 401, 403, 413, 429, 503}
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        if path == "/v1/messages":
            assert body["type"] == "error"
            error = body["error"]
            assert isinstance(error, dict) and error["type"] and error["message"]
        elif path.startswith("/api/"):
            assert list(body) == ["error"] and isinstance(body["error"], str)
        else:
            error = body["error"]
            assert isinstance(error, dict) and set(error) == {"message", "type", "code"}
        if status == 401:
            assert headers["WWW-Authenticate"].startswith('Bearer realm="spoa-agent"')
        if status == 429:
            assert int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize("lua", ["lua5.3", "lua5.4"])
def test_a_hostile_model_name_still_gives_valid_json(lua: str) -> None:
    messages = [body for path, _, _, body in _render_all(lua) if path == "/api/pull"
                and "not allowed for this API key" in str(body["error"])]
    assert messages == [{"error": "model 'q\"\\?' is not allowed for this API key: "
                                  "use one the key allows"}]
