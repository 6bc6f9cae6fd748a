"""The spoa-agent command as scripts use it: output and exit codes."""

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spoa_agent.cli.main import cli
from spoa_agent.install.shipped import EXAMPLE_CONFIG

EXAMPLE = str(EXAMPLE_CONFIG)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"SPOA_AGENT_CONFIG": None})
    return result.exit_code, result.stdout, result.stderr


def test_check_allowed_exits_0() -> None:
    code, out, _ = run("--config", EXAMPLE, "check", "--method", "post", "--path", "/api/chat")
    assert code == 0
    assert out.startswith("ALLOW POST /api/chat") and "ollama-chat" in out


def test_check_denied_exits_1_and_says_why() -> None:
    code, out, _ = run("--config", EXAMPLE, "check", "--method", "POST", "--path", "/api/pull",
                       "--format", "json")
    assert code == 1
    assert json.loads(out) == {"allowed": False, "status": 403, "reason": "route_not_allowed",
                               "rule": "", "principal": None}


def test_check_with_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[routes]]\npath = 3\n")
    code, _, err = run("--config", str(bad), "check", "--method", "GET", "--path", "/")
    assert code == 2
    assert f"{bad}: routes[0].path" in err


def test_check_usage_error_exits_2() -> None:
    code, _, _ = run("check", "--method", "GET")
    assert code == 2


def test_config_validate() -> None:
    code, out, _ = run("config", "validate", EXAMPLE)
    assert code == 0 and "OK (13 routes)" in out


def test_config_validate_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nworkers = "many"\n[[routes]]\npath = "/x"\nmethods = ["BREW"]\n')
    code, _, err = run("config", "validate", str(bad))
    assert code == 2
    assert "server.workers" in err and "routes[0]" in err and "BREW" in err


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "routes: none, so every request would be refused (403)"),
    (b"[server]\nlisten = \"127.0.0.1:1\xe9\"\n", "not UTF-8 text"),
    (bytes(range(256)) * 8, "not UTF-8 text"),
    (b"\x00garbage = = =", "not valid TOML"),
])
def test_config_validate_refuses_with_one_line_naming_the_file(tmp_path: Path, raw: bytes,
                                                                message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(raw)
    code, out, err = run("config", "validate", str(bad))
    assert code == 2 and out == ""
    assert err.startswith(f"{bad}: ") and message in err and err.count("\n") == 1


def test_config_validate_refuses_a_directory(tmp_path: Path) -> None:
    code, _, err = run("config", "validate", str(tmp_path))
    assert code == 2
    assert err == f"{tmp_path}: cannot read: Is a directory\n"


def test_config_validate_accepts_deny_all(tmp_path: Path) -> None:
    config = tmp_path / "closed.toml"
    config.write_text("deny_all = true\n")
    code, out, _ = run("config", "validate", str(config))
    assert code == 0 and "OK (0 routes: deny_all, every request is refused)" in out
    code, out, _ = run("--config", str(config), "check", "--method", "GET", "--path", "/api/tags")
    assert code == 1 and out.startswith("DENY 403")


def test_check_token_stdin_needs_a_key_and_excludes_token() -> None:
    args = ["--config", EXAMPLE, "check", "--method", "GET", "--path", "/api/tags"]
    result = CliRunner().invoke(cli, [*args, "--token-stdin"], input="\n",
                                env={"SPOA_AGENT_CONFIG": None})
    assert result.exit_code == 2 and "no API key or JWT on the first line of stdin" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--token-stdin", "--token", "x"], input="k\n",
                                env={"SPOA_AGENT_CONFIG": None})
    assert result.exit_code == 2 and "not both" in result.stderr


def test_serve_rejects_bad_listen() -> None:
    code, _, err = run("serve", "--listen", "nowhere")
    assert code == 2
    assert "HOST:PORT" in err


def test_token_budgets_per_model_merge_into_the_key_s() -> None:
    from spoa_agent.cli.token import TokenBudgetType, _budget_changes
    from spoa_agent.store.tokens import KeyRecord

    parse = TokenBudgetType().convert
    assert parse("200k/d", None, None) == ("", "200k/d")
    assert parse("llama3.1:70b=50k/d", None, None) == ("llama3.1:70b", "50k/d")
    assert parse("llama3.1:70b=none", None, None) == ("llama3.1:70b", "none")
    for bad in ("=50k/d", "m=lots", "lots"):
        with pytest.raises(click.BadParameter):
            parse(bad, None, None)
    record = KeyRecord("k1", "team", "h", tokens="1M/d",
                       model_tokens=(("a", "1k/d"), ("b", "2k/d")))
    # One model changed, one removed, one added; the key's own left alone.
    changes = _budget_changes(record, (("a", "none"), ("b", "3k/d"), ("c", "4k/d")))
    assert changes == {"model_tokens": json.dumps({"b": "3k/d", "c": "4k/d"})}
    assert _budget_changes(record, (("", "none"),)) == {"tokens": None}
    assert _budget_changes(record, (("a", "none"), ("b", "none"))) == {"model_tokens": None}
