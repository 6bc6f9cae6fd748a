"""Config loading: every problem named with the file and the field."""

from pathlib import Path

import pytest

from spoa_agent.config import (
    ConfigError,
    Listen,
    load_config,
    parse_listen,
    parse_seconds,
    parse_size,
)
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.store.redis import parse_url


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={})
    assert config.server.listen == Listen("127.0.0.1", 12345)
    assert config.server.workers == 1
    assert config.routes == ()


def test_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
listen = "0.0.0.0:9000"
workers = 2
hello_timeout = "250ms"
drain_timeout = 3
[log]
level = "debug"
[[routes]]
methods = ["get"]
path = "/api/tags"
""")
    config = load_config(path, env={})
    assert config.server.listen == Listen("0.0.0.0", 9000)
    assert config.server.workers == 2
    assert config.server.hello_timeout == 0.25
    assert config.server.drain_timeout == 3.0
    assert config.log.level == "debug"
    assert config.routes[0].methods == frozenset({"GET"})


def test_every_problem_is_reported_with_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
listen = "nowhere"
workers = 0
hello_timeout = "soon"
colour = "blue"
[log]
level = "loud"
[[routes]]
path = "api/tags"
methods = ["GET"]
[[routes]]
path = "/x"
""")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    problems = err.value.problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    text = "\n".join(problems)
    for field in ("server.listen", "server.workers", "server.hello_timeout", "server.colour",
                  "log.level", "routes[0]", "routes[1].methods"):
        assert f": {field}" in text, field
    assert len(problems) == 7


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), env={})


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "routes: none, so every request would be refused (403)"),
    (b"# nothing yet\n[server]\nworkers = 1\n", "put deny_all = true at the top"),
    (b'[log]\nlevel = "info\xe9"\n', "not UTF-8 text (TOML must be): byte 0xe9 on line 2"),
    (b"\xff\xfe[\x00\x01garbage" * 64, "not UTF-8 text"),
    (b"\x00\x01\x02", "not valid TOML"),
    (b'deny_all = "yes"\n', "deny_all: must be true or false"),
    (b'deny_all = true\npresets = ["ollama-safe"]\n', "deny_all: is true but the file has"),
])
def test_bad_files_are_one_problem_naming_the_file(tmp_path: Path, raw: bytes,
                                                   message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}: ")
    assert message in err.value.problems[0]
    assert "\n" not in err.value.problems[0]


def test_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    assert err.value.problems == [f"{tmp_path}: cannot read: Is a directory"]


def test_deny_all_allows_an_empty_route_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "deny_all = true\n[server]\nworkers = 1\n"), env={})
    assert config.deny_all and config.routes == ()
    assert not load_config(None, env={}).deny_all


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:1"\n[[routes]]\npath = "/"\n'
                 'methods = ["GET"]\n')
    config = load_config(path, env={"SPOA_AGENT_LISTEN": "[::1]:7000",
                                    "SPOA_AGENT_LOG_FILE": "/tmp/a.log"})
    assert config.server.listen == Listen("::1", 7000)
    assert config.log.file == "/tmp/a.log"
    with pytest.raises(ConfigError, match="SPOA_AGENT_LISTEN"):
        load_config(path, env={"SPOA_AGENT_LISTEN": "7000"})


def test_usage_settings_and_their_environment(tmp_path: Path) -> None:
    assert load_config(None, env={}).usage.listen == Listen("127.0.0.1", 12346)
    path = write(tmp_path, 'deny_all = true\n[usage]\nlisten = "off"\nretention_days = 90\n'
                 'per_key_metrics = true\n')
    config = load_config(path, env={})
    assert (config.usage.listen, config.usage.retention_days, config.usage.per_key_metrics) \
        == (None, 90, True)
    assert load_config(path, env={"SPOA_AGENT_USAGE_LISTEN": "127.0.0.1:9"}).usage.listen \
        == Listen("127.0.0.1", 9)
    with pytest.raises(ConfigError, match="SPOA_AGENT_USAGE_LISTEN"):
        load_config(path, env={"SPOA_AGENT_USAGE_LISTEN": "nowhere"})
    bad = write(tmp_path, 'deny_all = true\n[usage]\nretention_days = 0\nper_key_metrics = 1\n'
                'colour = "blue"\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    assert sorted(problem.split(": ", 1)[1] for problem in err.value.problems) == [
        "usage.colour: unknown setting",
        "usage.per_key_metrics: must be true or false, got 1",
        "usage.retention_days: must be an integer from 1 to 3660, got 0"]


def test_token_budget_settings(tmp_path: Path) -> None:
    path = write(tmp_path, 'deny_all = true\n[ratelimit]\ntokens_per_key = "1M/d"\n'
                 'tokens_count = "output"\n'
                 'tokens_per_model = { "llama3.1:70b" = "50k/d" }\n')
    limits = load_config(path, env={}).ratelimit
    assert (limits.tokens_per_key, limits.tokens_output_only) == ("1M/d", True)
    assert limits.tokens_per_model == {"llama3.1:70b": "50k/d"}
    bad = write(tmp_path, 'deny_all = true\n[ratelimit]\ntokens_per_key = "lots"\n'
                'tokens_count = "input"\ntokens_per_model = { "m" = "5/y" }\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    assert sorted(problem.split(": ", 2)[1] for problem in err.value.problems) == [
        "ratelimit.tokens_count", "ratelimit.tokens_per_key", "ratelimit.tokens_per_model.'m'"]
    # Charged from the usage HAProxy reports: not without it.
    off = write(tmp_path, 'deny_all = true\n[ratelimit]\ntokens_per_key = "1M/d"\n'
                '[usage]\nlisten = "off"\n')
    with pytest.raises(ConfigError, match=r"\[usage\] listen must not be off"):
        load_config(off, env={})


@pytest.mark.parametrize(("text", "listen"), [
    ("127.0.0.1:12345", Listen("127.0.0.1", 12345)),
    (":80", Listen("0.0.0.0", 80)),
    ("[::]:80", Listen("::", 80)),
    ("localhost:1", Listen("localhost", 1)),
])
def test_parse_listen(text: str, listen: Listen) -> None:
    assert parse_listen(text) == listen


@pytest.mark.parametrize("text", ["", "1.2.3.4", "host:0", "host:70000", "::1:80", "a:b"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize(("value", "seconds"), [(2, 2.0), (0.5, 0.5), ("250ms", 0.25),
                                                ("2m", 120.0), ("1h", 3600.0), ("30d", 2592000.0)])
def test_parse_seconds(value: object, seconds: float) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize("value", [0, -1, "1y", "30 days", "fast", True, None])
def test_parse_seconds_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_seconds(value)


@pytest.mark.parametrize(("url", "kind", "nodes", "service", "db"), [
    ("redis://127.0.0.1:6379/0", "standalone", (), "", 0),
    ("rediss://:pw@cache.example:6380/2", "standalone", (), "", 0),
    ("unix:///run/redis.sock?db=1", "standalone", (), "", 0),
    ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/3", "sentinel",
     (("10.0.0.1", 26379), ("10.0.0.2", 26379)), "mymaster", 3),
    ("redis+cluster://:pw@n1:7000,n2:7001", "cluster", (("n1", 7000), ("n2", 7001)), "", 0),
])
def test_redis_urls(url: str, kind: str, nodes: tuple[tuple[str, int], ...], service: str,
                    db: int) -> None:
    target = parse_url(url)
    assert (target.kind, target.nodes, target.service, target.db) == (kind, nodes, service, db)


def test_redis_password_and_tls() -> None:
    assert parse_url("rediss+cluster://:s3cret@n1:7000").password == "s3cret"
    assert parse_url("rediss+cluster://n1:7000").tls
    assert parse_url("redis+cluster://:a@n1:7000", password="b").password == "b"


@pytest.mark.parametrize("url", ["http://x", "redis+sentinel://h:1", "redis+cluster://h",
                                 "redis+sentinel://h:1/m/x", "mysql://h:1"])
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_presets_routes_and_their_problems(tmp_path: Path) -> None:
    path = write(tmp_path, """
presets = ["ollama-safe", { name = "openai", host = "api.example.com" }, "nope"]
[auth]
scopes = ["chat"]
[[routes]]
name = "mine"
methods = ["POST"]
path = "/api/chat"
scopes = ["chat", "admin"]
max_body = "2m"
[[routes]]
prefix = "/ui/"
path = "/ui/"
methods = ["GET"]
[[routes]]
prefix = "/ui/"
methods = ["GET"]
auth = "maybe"
""")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = "\n".join(err.value.problems)
    assert "presets[2]: unknown preset 'nope'" in text
    assert "routes[0].scopes: unknown scopes ['admin']" in text
    assert "routes[1]: needs exactly one of path" in text
    assert "routes[2].auth" in text
    assert "'ollama-chat' (preset ollama-safe) can never apply: 'mine'" in text


def test_presets_load() -> None:
    config = load_config(EXAMPLE_CONFIG,
                         env={})
    names = {route.name for route in config.routes}
    assert {"ollama-chat", "openai-chat", "anthropic-messages"} <= names
    assert all(route.model_in_body for route in config.routes if route.name == "ollama-chat")
    assert parse_size("2m") == 2 * 1024 * 1024
