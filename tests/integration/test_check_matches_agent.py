"""`spoa-agent check` and the running agent decide the same for a table of
requests; scopes and own-login routes included."""

from __future__ import annotations

import json
from pathlib import Path

from spoa_agent.demo.stack import Gateway
from spoa_agent.spop import Ack, SetVar
from tests.conftest import EXAMPLE_CONFIG, OWN_LOGIN_ROUTE
from tests.peer import Peer

EXTRA = '''
[auth]
scopes = ["chat", "admin"]

[[routes]]
name = "admin-ps"
methods = ["GET"]
path = "/api/ps"
scopes = ["admin"]
''' + OWN_LOGIN_ROUTE

CASES = [
    ("GET", "/api/tags", "gw.example.com"),
    ("POST", "/api/chat", "gw.example.com"),
    ("POST", "/api/pull", "gw.example.com"),
    ("GET", "/api/chat", "gw.example.com"),
    ("GET", "/v1/models/llama3.2:1b", "gw.example.com"),
    ("GET", "/v1/models/../../api/pull", "gw.example.com"),
    ("GET", "/api/ps", "gw.example.com"),  # needs the admin scope
    ("GET", "/", "chat.example.com"),  # own login: no key asked for
    ("POST", "/api/v1/chats/new", "chat.example.com"),
    ("GET", "/../api/pull", "chat.example.com"),
]


def test_check_and_agent_agree(redis_gw: Gateway, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    text = EXAMPLE_CONFIG.read_text()
    # [auth] scopes must join the existing [auth] table, not start a second one.
    text = text.replace("[auth]\n", '[auth]\nscopes = ["chat", "admin"]\n', 1)
    config.write_text(text + EXTRA.replace('[auth]\nscopes = ["chat", "admin"]\n', ""))
    created = json.loads(redis_gw.spoa_agent("token", "create", "--name", "chatter", "--scope",
                                             "chat", "--format", "json").stdout)
    redis_gw.start_agent(config)
    peer = Peer(redis_gw.agent_port)
    peer.hello()
    for stream, (method, path, host) in enumerate(CASES):
        peer.notify(stream, method=method, path=path, host=host,
                    authorization=f"Bearer {created['token']}")
        ack = peer.read()
        assert isinstance(ack, Ack)
        agent = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
        result = redis_gw.spoa_agent("--config", str(config), "check", "--method", method,
                                     "--path", path, "--host", host, "--token",
                                     created["token"], "--format", "json")
        cli = json.loads(result.stdout)
        assert result.returncode == (0 if cli["allowed"] else 1)
        assert (cli["allowed"], cli["status"], cli["reason"]) == (
            agent["decision"] == "allow", agent["status"], agent["reason"]), (method, path, host)
    ps = redis_gw.spoa_agent("--config", str(config), "check", "--method", "GET", "--path",
                             "/api/ps", "--token", created["token"], "--format", "json")
    assert json.loads(ps.stdout)["reason"] == "missing_scope"
    own = redis_gw.spoa_agent("--config", str(config), "check", "--method", "GET", "--path",
                              "/", "--host", "chat.example.com", "--format", "json")
    assert json.loads(own.stdout)["allowed"]
