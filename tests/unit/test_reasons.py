"""The Reason enumeration and lua/spoa_deny.lua agree: every reason the agent
can answer with is rendered with its status and public code, and every
reason the Lua knows is one the gateway can give."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from spoa_agent.install.shipped import LUA_DENY
from spoa_agent.reasons import HAPROXY_REASONS, Reason

LUA_FILE = LUA_DENY
# Each entry of the Lua's REASONS table: `  name = { status, "code",`.
LUA_ENTRY = re.compile(r'^  ([a-z_]+) = \{ (\d{3}), "([a-z_]+)"', re.M)


def lua_denials(cases: list[dict[str, object]]) -> list[tuple[int, str]]:
    """What the Lua answers for each set of variables: (status, public code)."""
    lua = shutil.which("lua5.4") or shutil.which("lua5.3")
    if lua is None:
        pytest.fail("lua5.4 is not installed: run `make deps`")
    script = (
        f"package.path = {json.dumps(str(LUA_FILE.parent) + '/?.lua')} .. ';' .. package.path\n"
        "local M = require('spoa_deny')\n"
        "for line in io.lines() do\n"
        "  local vars = {}\n"
        "  for k, v in line:gmatch('(%w[%w_]*)=([^\\t]*)') do vars[k] = v end\n"
        "  local status, code = M.denial(vars)\n"
        "  print(status .. ' ' .. code)\n"
        "end\n")
    stdin = "\n".join("\t".join(f"{k}={v}" for k, v in case.items()) for case in cases)
    done = subprocess.run([lua, "-e", script], input=stdin + "\n", capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [(int(status), code) for status, code in
            (line.split() for line in done.stdout.splitlines())]


def test_every_agent_reason_is_rendered_with_its_status_and_code() -> None:
    reasons = list(Reason)
    rendered = lua_denials([{"decision": "deny", "status": r.status, "reason": r.value}
                            for r in reasons])
    assert rendered == [(r.status, r.code) for r in reasons]


def test_every_haproxy_reason_is_rendered_with_its_status_and_code() -> None:
    names = sorted(HAPROXY_REASONS)
    assert lua_denials([{"deny": name} for name in names]) == [HAPROXY_REASONS[n]
                                                               for n in names]


def test_the_lua_knows_no_reason_the_gateway_never_gives() -> None:
    in_lua = {name: (int(status), code)
              for name, status, code in LUA_ENTRY.findall(LUA_FILE.read_text())}
    assert in_lua, "the Lua's REASONS table was not found"
    known = {r.value: (r.status, r.code) for r in Reason} | HAPROXY_REASONS
    assert {name: known.get(name) for name in in_lua} == in_lua


def test_gateway_faults_are_the_5xx_reasons() -> None:
    assert {r for r in Reason if r.gateway_fault} == {
        Reason.STORE_UNAVAILABLE, Reason.AUTH_OVERLOADED, Reason.RATELIMIT_UNAVAILABLE,
        Reason.JWKS_UNAVAILABLE, Reason.SESSION_UNAVAILABLE}
