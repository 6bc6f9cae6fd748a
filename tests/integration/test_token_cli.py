"""`spoa-agent token ...` against a real Redis, as an operator or a script uses it."""

from __future__ import annotations

import json
import subprocess
import sys

from spoa_agent.auth import SecretHasher
from spoa_agent.auth.keys import parse_key
from spoa_agent.demo.stack import Gateway, free_port
from spoa_agent.store.redis import sync_client
from spoa_agent.store.tokens import TokenStore


def ok(gw: Gateway, *args: str) -> str:
    result = gw.spoa_agent("token", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_json_shows_the_secret_once_and_stores_only_a_hash(redis_gw: Gateway) -> None:
    created = json.loads(ok(redis_gw, "create", "--name", "laptop", "--scope", "chat",
                            "--scope", "models", "--expires", "30d", "--rate", "60/m",
                            "--format", "json"))
    parsed = parse_key(created["token"], "spoa")
    assert parsed.key_id == created["id"]
    assert created["scopes"] == ["chat", "models"] and created["rate"] == "60/m"
    assert 29.9 * 86400 < created["expires_at"] - created["created_at"] <= 30 * 86400
    record = TokenStore(sync_client(redis_gw.redis_url)).get(created["id"])
    assert record.hash.startswith("$argon2id$")
    assert SecretHasher().verify(record.hash, parsed.secret)
    shown = json.loads(ok(redis_gw, "show", created["id"], "--format", "json"))
    assert "token" not in shown and parsed.secret not in json.dumps(shown)


def test_text_output_puts_only_the_key_on_stdout(redis_gw: Gateway) -> None:
    result = redis_gw.spoa_agent("token", "create", "--name", "ci")
    assert result.returncode == 0
    assert parse_key(result.stdout.strip(), "spoa")
    assert "shown only this once" in result.stderr


def test_list_filters_show_update_rotate_revoke_delete(redis_gw: Gateway) -> None:
    a = json.loads(ok(redis_gw, "create", "--name", "alice-laptop", "--format", "json"))
    b = json.loads(ok(redis_gw, "create", "--name", "bob-phone", "--format", "json"))
    table = ok(redis_gw, "list")
    assert table.splitlines()[0].split() == ["ID", "NAME", "STATUS", "SCOPES", "RATE",
                                             "EXPIRES", "LAST", "USED"]
    assert a["id"] in table and b["id"] in table

    updated = json.loads(ok(redis_gw, "update", a["id"], "--scope", "admin", "--rate", "10/s",
                            "--expires", "never", "--format", "json"))
    assert (updated["scopes"], updated["rate"], updated["expires_at"]) == (["admin"], "10/s", None)

    rotated = json.loads(ok(redis_gw, "rotate", a["id"], "--grace", "10m", "--format", "json"))
    assert rotated["id"] == a["id"] and rotated["token"] != a["token"]
    assert rotated["previous_secret_valid_until"] is not None

    assert "Revoked" in ok(redis_gw, "revoke", a["token"])  # a whole key names it too
    revoked = json.loads(ok(redis_gw, "list", "--status", "revoked", "--format", "json"))
    assert [k["id"] for k in revoked] == [a["id"]]
    named = json.loads(ok(redis_gw, "list", "--name", "BOB", "--format", "json"))
    assert [k["id"] for k in named] == [b["id"]]

    ok(redis_gw, "delete", b["id"], "--yes")
    assert [k["id"] for k in json.loads(ok(redis_gw, "list", "--format", "json"))] == [a["id"]]


def test_unknown_id_bad_duration_and_bad_rate(redis_gw: Gateway) -> None:
    result = redis_gw.spoa_agent("token", "revoke", "AAAAAAAAAAAA")
    assert result.returncode == 1
    assert "no key with id 'AAAAAAAAAAAA'" in result.stderr
    result = redis_gw.spoa_agent("token", "create", "--name", "x", "--expires", "soon")
    assert result.returncode == 2 and "30d" in result.stderr
    result = redis_gw.spoa_agent("token", "create", "--name", "x", "--rate", "fast")
    assert result.returncode == 2 and "60/m" in result.stderr
    result = redis_gw.spoa_agent("token", "show", "not-an-id")
    assert result.returncode == 2
    result = redis_gw.spoa_agent("token", "update", "AAAAAAAAAAAA")
    assert result.returncode == 2 and "nothing to change" in result.stderr


def test_redis_unreachable_names_the_url_without_a_traceback() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = subprocess.run([sys.executable, "-m", "spoa_agent", "--redis-url", url, "token",
                             "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_check_with_a_real_token(redis_gw: Gateway) -> None:
    from tests.conftest import EXAMPLE_CONFIG

    created = json.loads(ok(redis_gw, "create", "--name", "laptop", "--format", "json"))
    base = ["--config", str(EXAMPLE_CONFIG), "check", "--method", "POST", "--path", "/api/chat"]
    allowed = redis_gw.spoa_agent(*base, "--token", created["token"])
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("ALLOW POST /api/chat as laptop: allowed (rule: ollama-chat)")
    ok(redis_gw, "revoke", created["id"])
    refused = redis_gw.spoa_agent(*base, "--token", created["token"], "--format", "json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["reason"] == "revoked_key"
    anyone = redis_gw.spoa_agent(*base)
    assert anyone.returncode == 0 and "as any valid key" in anyone.stdout


def test_check_takes_the_key_from_stdin_or_the_environment(redis_gw: Gateway) -> None:
    """The key never has to be in the process arguments (visible to every user)."""
    import os

    from tests.conftest import EXAMPLE_CONFIG

    created = json.loads(ok(redis_gw, "create", "--name", "desk", "--format", "json"))
    key = created["token"]
    base = [sys.executable, "-m", "spoa_agent", "--config", str(EXAMPLE_CONFIG), "check",
            "--method", "POST", "--path", "/api/chat"]
    env = {**os.environ, "SPOA_AGENT_REDIS_URL": redis_gw.redis_url}
    env.pop("SPOA_AGENT_CHECK_TOKEN", None)

    def check(*args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], input=stdin, capture_output=True, text=True,
                              env={**env, **extra}, timeout=60)

    for result in (check("--token-stdin", stdin=key + "\n"),
                   check(SPOA_AGENT_CHECK_TOKEN=key),
                   # asked for on this command line: wins over the environment
                   check("--token-stdin", stdin=key + "\n", SPOA_AGENT_CHECK_TOKEN="x")):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ALLOW POST /api/chat as desk: allowed")
    wrong = check("--format", "json", SPOA_AGENT_CHECK_TOKEN=key[:-1] + "A")
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["status"] == 401
    ok(redis_gw, "revoke", created["id"])
    for result in (check("--token-stdin", "--format", "json", stdin=key + "\n"),
                   check("--format", "json", SPOA_AGENT_CHECK_TOKEN=key)):
        assert result.returncode == 1
        assert json.loads(result.stdout)["reason"] == "revoked_key"
