"""Agent configuration: TOML file, then environment, then command line.

Config objects only store values; `load_config` validates and raises
ConfigError listing every problem, each naming the file and the field.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spoa_agent.auth import Argon2Params, AuthSettings, JwtConfigError
from spoa_agent.auth.jwks import check_url
from spoa_agent.auth.jwt import JwtVerifier, load_issuer
from spoa_agent.auth.keys import validate_prefix
from spoa_agent.logging import LEVELS
from spoa_agent.oidc.settings import OidcSettings, read_secret
from spoa_agent.policy import PRESET_NAMES, Route, RouteError, RouteTable, preset_routes
from spoa_agent.ratelimit.limits import OnRedisError, Rate, parse_rate, parse_token_budget
from spoa_agent.ratelimit.settings import LimitSpec, RateLimitConfig
from spoa_agent.server.settings import Listen, ServerConfig
from spoa_agent.spop import MIN_FRAME_SIZE
from spoa_agent.store.redis import DEFAULT_TIMEOUT, DEFAULT_URL, parse_url
from spoa_agent.usage.settings import UsageSettings

ENV_CONFIG = "SPOA_AGENT_CONFIG"
ENV_LISTEN = "SPOA_AGENT_LISTEN"
ENV_LOG_FILE = "SPOA_AGENT_LOG_FILE"
ENV_REDIS_URL = "SPOA_AGENT_REDIS_URL"
ENV_REDIS_PASSWORD = "SPOA_AGENT_REDIS_PASSWORD"
ENV_METRICS_LISTEN = "SPOA_AGENT_METRICS_LISTEN"
ENV_USAGE_LISTEN = "SPOA_AGENT_USAGE_LISTEN"


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    file: str | None = None
    # Also one line per allowed request (event.action request_allowed).
    successes: bool = False


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT
    password: str | None = None  # overrides one in the URL; env SPOA_AGENT_REDIS_PASSWORD


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Prometheus /metrics and /health; None: off. Worker i serves on port + i.
    listen: Listen | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    usage: UsageSettings = field(default_factory=UsageSettings)
    routes: tuple[Route, ...] = ()
    oidc: OidcSettings | None = None  # [oidc]: browser sign-in for auth = "oidc" routes
    # `deny_all = true`: no routes on purpose; without it a file with none is an error.
    deny_all: bool = False
    source: str = "<defaults>"


def parse_listen(text: str) -> Listen:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
    if match is None:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = match.group(1) or match.group(3) or "0.0.0.0"
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return Listen(host, port)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_seconds(value: object) -> float:
    """A duration: a number of seconds or a string like "250ms", "5s", "2m", "30d"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 5s, 10m, 12h or 30d, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


class _Reader:
    """Takes typed fields out of one TOML table, collecting problems."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}")

    def table(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(where, "must be a table")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], known: set[str], where: str) -> None:
        for key in sorted(set(data) - known):
            self.problem(f"{where}.{key}" if where else key, "unknown setting")

    def integer(self, data: Mapping[str, Any], key: str, where: str, default: int,
                low: int, high: int) -> int:
        value = data.get(key, default)
        if type(value) is not int or not low <= value <= high:
            self.problem(f"{where}.{key}",
                         f"must be an integer from {low} to {high}, got {value!r}")
            return default
        return value

    def seconds(self, data: Mapping[str, Any], key: str, where: str, default: float) -> float:
        if key not in data:
            return default
        try:
            return parse_seconds(data[key])
        except ValueError as err:
            self.problem(f"{where}.{key}", str(err))
            return default


def _server(reader: _Reader, data: Mapping[str, Any]) -> ServerConfig:
    d = ServerConfig()
    reader.unknown(data, {f for f in ServerConfig.__dataclass_fields__}, "server")
    listen = d.listen
    if "listen" in data:
        try:
            listen = parse_listen(str(data["listen"]))
        except ValueError as err:
            reader.problem("server.listen", str(err))
    return ServerConfig(
        listen=listen,
        workers=reader.integer(data, "workers", "server", d.workers, 1, 256),
        max_frame_size=reader.integer(
            data, "max_frame_size", "server", d.max_frame_size, MIN_FRAME_SIZE, 16 * 1024 * 1024
        ),
        max_in_flight=reader.integer(data, "max_in_flight", "server", d.max_in_flight, 1, 65536),
        hello_timeout=reader.seconds(data, "hello_timeout", "server", d.hello_timeout),
        handler_timeout=reader.seconds(data, "handler_timeout", "server", d.handler_timeout),
        drain_timeout=reader.seconds(data, "drain_timeout", "server", d.drain_timeout),
    )


def _log(reader: _Reader, data: Mapping[str, Any]) -> LogConfig:
    reader.unknown(data, {"level", "file", "successes"}, "log")
    level = data.get("level", "info")
    if level not in LEVELS:
        reader.problem("log.level", f"must be one of {', '.join(LEVELS)}, got {level!r}")
        level = "info"
    file = data.get("file")
    if file is not None and not isinstance(file, str):
        reader.problem("log.file", "must be a path")
        file = None
    successes = data.get("successes", False)
    if not isinstance(successes, bool):
        reader.problem("log.successes", "must be true or false")
        successes = False
    return LogConfig(level=level, file=file, successes=successes)


def _redis(reader: _Reader, data: Mapping[str, Any]) -> RedisConfig:
    reader.unknown(data, {"url", "timeout", "password"}, "redis")
    url = data.get("url", DEFAULT_URL)
    try:
        parse_url(str(url))
    except ValueError as err:
        reader.problem("redis.url", str(err))
        url = DEFAULT_URL
    password = data.get("password")
    if password is not None and not isinstance(password, str):
        reader.problem("redis.password", "must be a string")
        password = None
    return RedisConfig(url=str(url), timeout=reader.seconds(data, "timeout", "redis",
                                                            DEFAULT_TIMEOUT), password=password)


def _auth(reader: _Reader, data: Mapping[str, Any], jwt: Mapping[str, Any]) -> AuthSettings:
    d = AuthSettings()
    reader.unknown(data, {"required", "key_prefix", "cache_size", "cache_ttl", "failure_ttl",
                          "argon2_workers", "argon2_max_pending", "argon2_per_source",
                          "argon2", "scopes", "on_redis_error"}, "auth")
    required = data.get("required", d.required)
    if not isinstance(required, bool):
        reader.problem("auth.required", "must be true or false")
        required = True
    prefix = data.get("key_prefix", d.key_prefix)
    try:
        validate_prefix(str(prefix))
    except ValueError as err:
        reader.problem("auth.key_prefix", str(err))
        prefix = d.key_prefix
    argon2 = reader.table(data, "argon2", "auth.argon2")
    reader.unknown(argon2, {"time_cost", "memory_kib", "parallelism"}, "auth.argon2")
    p = Argon2Params()
    params = Argon2Params(
        time_cost=reader.integer(argon2, "time_cost", "auth.argon2", p.time_cost, 1, 100),
        memory_kib=reader.integer(argon2, "memory_kib", "auth.argon2", p.memory_kib, 8,
                                  4 * 1024 * 1024),
        parallelism=reader.integer(argon2, "parallelism", "auth.argon2", p.parallelism, 1, 64),
    )
    reader.unknown(jwt, {"issuers"}, "jwt")
    issuers = []
    raw_issuers = jwt.get("issuers", [])
    for index, item in enumerate(raw_issuers if isinstance(raw_issuers, list) else []):
        where = f"jwt.issuers[{index}]"
        if not isinstance(item, dict):
            reader.problem(where, "must be a table")
            continue
        reader.unknown(item, {"issuer", "algorithms", "audience", "pem_file", "jwks_file",
                              "scopes_claim", "leeway", "jwks_url", "discovery",
                              "jwks_max_age", "jwks_min_refresh", "jwks_timeout"}, where)
        try:
            issuer = load_issuer(item)
            JwtVerifier((issuer,))  # its key files must be readable now, not at first use
            issuers.append(issuer)
        except KeyError as err:
            reader.problem(where, f"{err.args[0]} is required")
        except (JwtConfigError, TypeError, ValueError) as err:
            reader.problem(where, str(err))
    return AuthSettings(
        required=required,
        key_prefix=str(prefix),
        cache_size=reader.integer(data, "cache_size", "auth", d.cache_size, 1, 10_000_000),
        cache_ttl=reader.seconds(data, "cache_ttl", "auth", d.cache_ttl),
        failure_ttl=reader.seconds(data, "failure_ttl", "auth", d.failure_ttl),
        argon2=params,
        argon2_workers=reader.integer(data, "argon2_workers", "auth", d.argon2_workers, 1, 64),
        argon2_max_pending=reader.integer(data, "argon2_max_pending", "auth",
                                          d.argon2_max_pending, 1, 100_000),
        argon2_per_source=reader.integer(data, "argon2_per_source", "auth",
                                         d.argon2_per_source, 1, 100_000),
        on_redis_error=_on_error(reader, data.get("on_redis_error"), "auth.on_redis_error",
                                 d.on_redis_error),
        issuers=tuple(issuers),
    )


def _on_error(reader: _Reader, value: object, where: str,
              default: OnRedisError) -> OnRedisError:
    if value is None:
        return default
    try:
        return OnRedisError(value)
    except ValueError:
        reader.problem(where, f'must be "open" or "closed", got {value!r}')
        return default


def _rate(reader: _Reader, value: object, where: str) -> Rate | None:
    if not isinstance(value, str):
        reader.problem(where, "must be a rate like \"60/m\"")
        return None
    try:
        return parse_rate(value)
    except ValueError as err:
        reader.problem(where, str(err))
        return None


def _limit(reader: _Reader, data: Mapping[str, Any], key: str,
           default: OnRedisError) -> LimitSpec | None:
    """`per_ip = "120/m"` or `per_ip = { rate = "120/m", on_redis_error = "open" }`."""
    value = data.get(key)
    where = f"ratelimit.{key}"
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        reader.unknown(value, {"rate", "on_redis_error"}, where)
        rate = _rate(reader, value.get("rate"), f"{where}.rate")
        mode = _on_error(reader, value.get("on_redis_error"), f"{where}.on_redis_error", default)
    else:
        rate, mode = _rate(reader, value, where), default
    return LimitSpec(rate, mode) if rate is not None else None


def _ratelimit(reader: _Reader, data: Mapping[str, Any]) -> RateLimitConfig:
    reader.unknown(data, {"per_key", "per_ip", "global", "per_key_in_flight", "on_redis_error",
                          "redis_timeout", "tokens_per_key", "tokens_count", "tokens_per_model"},
                   "ratelimit")
    d = RateLimitConfig()
    mode = _on_error(reader, data.get("on_redis_error"), "ratelimit.on_redis_error",
                     d.on_redis_error)
    return RateLimitConfig(
        per_key=_limit(reader, data, "per_key", mode),
        per_ip=_limit(reader, data, "per_ip", mode),
        global_=_limit(reader, data, "global", mode),
        per_key_in_flight=reader.integer(data, "per_key_in_flight", "ratelimit", 0, 0, 100_000),
        on_redis_error=mode,
        redis_timeout=reader.seconds(data, "redis_timeout", "ratelimit", d.redis_timeout),
        **_token_budget(reader, data),
    )


def _token_budget(reader: _Reader, data: Mapping[str, Any]) -> dict[str, Any]:
    """`tokens_per_key = "1M/d"`, `tokens_per_model = { "llama3.1:70b" = "50k/d" }`
    and `tokens_count = "all" | "output"`."""
    settings: dict[str, Any] = {}
    text = data.get("tokens_per_key")
    if text not in (None, ""):
        try:
            parse_token_budget(str(text))
            settings["tokens_per_key"] = str(text).strip()
        except ValueError as err:
            reader.problem("ratelimit.tokens_per_key", str(err))
    per_model = data.get("tokens_per_model", {})
    if not isinstance(per_model, dict):
        reader.problem("ratelimit.tokens_per_model",
                       'must be a table of model = budget, e.g. { "llama3.1:70b" = "50k/d" }')
        per_model = {}
    budgets = {}
    for model, budget in per_model.items():
        try:
            parse_token_budget(str(budget))
            budgets[model] = str(budget).strip()
        except ValueError as err:
            reader.problem(f"ratelimit.tokens_per_model.{model!r}", str(err))
    settings["tokens_per_model"] = budgets
    counted = data.get("tokens_count", "all")
    if counted not in ("all", "output"):
        reader.problem("ratelimit.tokens_count", f'must be "all" or "output", got {counted!r}')
    settings["tokens_output_only"] = counted == "output"
    return settings


_SIZE = re.compile(r"(\d+)\s*([kmg]?)b?", re.I)
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_ROUTE_KEYS = {"path", "prefix", "methods", "name", "rate", "host", "scopes", "auth",
               "max_body", "model_in_body", "allow_groups", "allow_emails", "allow_claims"}


def parse_size(value: object) -> int:
    """Bytes: an integer, or a string like "512k", "1m"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        return int(match.group(1)) * _SIZE_UNIT[match.group(2).lower()]
    raise ValueError(f"expected a size like 1m or 512k, got {value!r}")


def _strings(reader: _Reader, value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        reader.problem(where, 'must be a list of strings, like ["chat"]')
        return frozenset()
    return frozenset(value)


def _claims(reader: _Reader, value: object,
            where: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """allow_claims = { claim = ["value", ...] }, in a stable order."""
    if not isinstance(value, dict):
        reader.problem(where, 'must be a table, like { department = ["ml"] }')
        return ()
    return tuple(sorted((str(name), _strings(reader, values, f"{where}.{name}"))
                        for name, values in value.items()))


def _route(reader: _Reader, item: dict[str, Any], where: str) -> Route | None:
    reader.unknown(item, _ROUTE_KEYS, where)
    if ("path" in item) == ("prefix" in item):
        reader.problem(where, "needs exactly one of path (exact or {template}) and prefix")
        return None
    path = item.get("path", item.get("prefix"))
    methods = item.get("methods")
    if not isinstance(path, str):
        reader.problem(f"{where}.path", "must be a string")
        return None
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        reader.problem(f"{where}.methods", "is required: a list like [\"GET\", \"POST\"]")
        return None
    auth = item.get("auth", "key")
    if auth not in ("key", "none", "oidc"):
        reader.problem(f"{where}.auth", 'must be "key", "none" (own login) or "oidc" '
                       f"(browser sign-in), got {auth!r}")
    if auth != "oidc" and ({"allow_groups", "allow_emails", "allow_claims"} & set(item)):
        reader.problem(where, 'allow_groups, allow_emails and allow_claims need auth = "oidc"')
    max_body = None
    if "max_body" in item:
        try:
            max_body = parse_size(item["max_body"])
        except ValueError as err:
            reader.problem(f"{where}.max_body", str(err))
    try:
        return Route(
            path, frozenset(m.upper() for m in methods), str(item.get("name", "")),
            rate=_rate(reader, item["rate"], f"{where}.rate") if "rate" in item else None,
            host=str(item.get("host", "")).lower(), prefix="prefix" in item,
            scopes=_strings(reader, item.get("scopes", []), f"{where}.scopes"),
            public=auth == "none", max_body=max_body,
            model_in_body=bool(item.get("model_in_body", False)),
            oidc=auth == "oidc",
            allow_groups=_strings(reader, item.get("allow_groups", []), f"{where}.allow_groups"),
            allow_emails=frozenset(e.lower() for e in _strings(
                reader, item.get("allow_emails", []), f"{where}.allow_emails")),
            allow_claims=_claims(reader, item.get("allow_claims", {}), f"{where}.allow_claims"),
        )
    except RouteError as err:
        reader.problem(where, str(err))
        return None


_OIDC_KEYS = {"issuer", "client_id", "client_secret", "client_secret_file", "scopes",
              "groups_claim", "algorithms", "idle_lifetime", "absolute_lifetime", "timeout",
              "leeway"}


def _oidc(reader: _Reader, data: object) -> OidcSettings | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        reader.problem("oidc", "must be a table")
        return None
    reader.unknown(data, _OIDC_KEYS, "oidc")
    d = OidcSettings("https://x", "x")
    for key in ("issuer", "client_id"):
        if not isinstance(data.get(key), str) or not data[key]:
            reader.problem(f"oidc.{key}", "is required: a string")
            return None
    try:
        check_url(data["issuer"], "oidc.issuer")
        secret = read_secret(data.get("client_secret"), data.get("client_secret_file"))
        return OidcSettings(
            issuer=data["issuer"], client_id=data["client_id"], client_secret=secret,
            scopes=tuple(data["scopes"]) if "scopes" in data and _strings(
                reader, data["scopes"], "oidc.scopes") else d.scopes,
            groups_claim=str(data.get("groups_claim", d.groups_claim)),
            algorithms=tuple(sorted(_strings(reader, data["algorithms"], "oidc.algorithms")))
            if "algorithms" in data else d.algorithms,
            idle_lifetime=reader.seconds(data, "idle_lifetime", "oidc", d.idle_lifetime),
            absolute_lifetime=reader.seconds(data, "absolute_lifetime", "oidc",
                                             d.absolute_lifetime),
            timeout=reader.seconds(data, "timeout", "oidc", d.timeout),
            leeway=reader.seconds(data, "leeway", "oidc", d.leeway),
        )
    except ValueError as err:
        reader.problem("oidc", str(err))
        return None


def _metrics(reader: _Reader, data: Mapping[str, Any]) -> MetricsConfig:
    reader.unknown(data, {"listen"}, "metrics")
    listen = data.get("listen", "")
    if not listen:
        return MetricsConfig()
    try:
        return MetricsConfig(parse_listen(str(listen)))
    except ValueError as err:
        reader.problem("metrics.listen", str(err))
        return MetricsConfig()


def _usage(reader: _Reader, data: Mapping[str, Any]) -> UsageSettings:
    d = UsageSettings()
    reader.unknown(data, {"listen", "retention_days", "per_key_metrics"}, "usage")
    listen = d.listen
    if "listen" in data:
        if data["listen"] in ("", "off"):
            listen = None
        else:
            try:
                listen = parse_listen(str(data["listen"]))
            except ValueError as err:
                reader.problem("usage.listen", str(err))
    per_key = data.get("per_key_metrics", d.per_key_metrics)
    if type(per_key) is not bool:
        reader.problem("usage.per_key_metrics", f"must be true or false, got {per_key!r}")
        per_key = d.per_key_metrics
    return UsageSettings(
        listen=listen,
        retention_days=reader.integer(data, "retention_days", "usage", d.retention_days, 1, 3660),
        per_key_metrics=per_key,
    )


def _declared_scopes(reader: _Reader, auth: Mapping[str, Any]) -> frozenset[str] | None:
    """[auth] scopes: the scopes that exist, if the config declares them."""
    if "scopes" not in auth:
        return None
    return _strings(reader, auth["scopes"], "auth.scopes")


def _presets(reader: _Reader, data: Any) -> list[Route]:
    """`presets = ["ollama-safe", { name = "openai", host = "api.example.com" }]`."""
    if not isinstance(data, list):
        reader.problem("presets", "must be a list of preset names or tables")
        return []
    routes: list[Route] = []
    for index, item in enumerate(data):
        where = f"presets[{index}]"
        spec = item if isinstance(item, dict) else {"name": item}
        reader.unknown(spec, {"name", "host"}, where)
        name, host = spec.get("name"), str(spec.get("host", "")).lower()
        if name not in PRESET_NAMES:
            reader.problem(where, f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}")
            continue
        try:
            routes += preset_routes(name, host)
        except RouteError as err:
            reader.problem(where, str(err))
    return routes


def _routes(reader: _Reader, data: Any, presets: Any, scopes: frozenset[str] | None
            ) -> tuple[Route, ...]:
    if not isinstance(data, list):
        reader.problem("routes", "must be an array of tables ([[routes]])")
        return ()
    routes: list[Route] = []
    for index, item in enumerate(data):
        where = f"routes[{index}]"
        if not isinstance(item, dict):
            reader.problem(where, "must be a table")
            continue
        route = _route(reader, item, where)
        if route is not None:
            if scopes is not None and route.scopes - scopes:
                reader.problem(f"{where}.scopes", f"unknown scopes "
                               f"{sorted(route.scopes - scopes)}; [auth] scopes lists "
                               f"{sorted(scopes)}")
            routes.append(route)
    # Rules of the config's own first: they win over a preset's for the same path.
    everything = tuple(routes + _presets(reader, presets))
    for earlier, later in RouteTable(everything).shadowed():
        origin = f" (preset {later.preset})" if later.preset else ""
        reader.problem("routes", f"{later.label!r}{origin} can never apply: "
                       f"{earlier.label!r} matches the same host, path and method first")
    return everything


_NO_ROUTES = ("none, so every request would be refused (403); add presets = "
              '["ollama-safe"] or [[routes]] tables, or put deny_all = true at the top of '
              "the file if that is what you want")


def _deny_all(reader: _Reader, data: Mapping[str, Any], routes: tuple[Route, ...]) -> bool:
    """An empty route table refuses everything: only on purpose, never by accident."""
    deny_all = data.get("deny_all", False)
    if not isinstance(deny_all, bool):
        reader.problem("deny_all", "must be true or false")
        return False
    if deny_all and routes:
        reader.problem("deny_all", f"is true but the file has {len(routes)} routes "
                       "(presets included); keep one or the other")
    elif not (deny_all or routes or data.get("routes") or data.get("presets")):
        reader.problem("routes", _NO_ROUTES)
    return bool(deny_all)


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    problems: list[str] = []
    reader = _Reader(source, problems)
    reader.unknown(data, {"server", "log", "redis", "auth", "jwt", "ratelimit", "metrics",
                          "usage", "presets", "routes", "deny_all", "oidc"}, "")
    config = Config(
        server=_server(reader, reader.table(data, "server", "server")),
        log=_log(reader, reader.table(data, "log", "log")),
        redis=_redis(reader, reader.table(data, "redis", "redis")),
        auth=_auth(reader, reader.table(data, "auth", "auth"), reader.table(data, "jwt", "jwt")),
        ratelimit=_ratelimit(reader, reader.table(data, "ratelimit", "ratelimit")),
        metrics=_metrics(reader, reader.table(data, "metrics", "metrics")),
        usage=_usage(reader, reader.table(data, "usage", "usage")),
        routes=_routes(reader, data.get("routes", []), data.get("presets", []),
                       _declared_scopes(reader, reader.table(data, "auth", "auth"))),
        source=source,
    )
    config = replace(config, deny_all=_deny_all(reader, data, config.routes),
                     oidc=_oidc(reader, data.get("oidc")))
    if config.oidc is None and any(route.oidc for route in config.routes):
        reader.problem("routes", 'a route has auth = "oidc" but there is no [oidc] table')
    if not config.auth.required and any(route.oidc for route in config.routes):
        reader.problem("auth.required", 'must be true with auth = "oidc" routes')
    budgets = config.ratelimit.tokens_per_key is not None or config.ratelimit.tokens_per_model
    if budgets and config.usage.listen is None:
        reader.problem("ratelimit.tokens_per_key", "token budgets are charged from the usage "
                       "HAProxy reports: [usage] listen must not be off")
    if problems:
        raise ConfigError(problems)
    return config


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    """The file's TOML, or one line naming the file and what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"{source}: cannot read: {err.strerror or err}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError([f"{source}: not UTF-8 text (TOML must be): byte "
                           f"0x{raw[err.start]:02x} on line {line}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{source}: not valid TOML: {err}"]) from None


def _env_listen(env: Mapping[str, str], name: str) -> Listen | None:
    """HOST:PORT from the environment variable `name`, if it is set."""
    if not env.get(name):
        return None
    try:
        return parse_listen(env[name])
    except ValueError as err:
        raise ConfigError([f"{name}: {err}"]) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read the file (if any), then apply the SPOA_AGENT_* environment overrides
    (LISTEN, REDIS_URL, REDIS_PASSWORD, METRICS_LISTEN, USAGE_LISTEN, LOG_FILE)."""
    env = os.environ if env is None else env
    if path is None:
        config = Config()
    else:
        source = str(path)
        config = parse_config(_read_toml(Path(path), source), source)
    listen = _env_listen(env, ENV_LISTEN)
    if listen is not None:
        config = replace(config, server=replace(config.server, listen=listen))
    if env.get(ENV_REDIS_URL):
        try:
            parse_url(env[ENV_REDIS_URL])
        except ValueError as err:
            raise ConfigError([f"{ENV_REDIS_URL}: {err}"]) from None
        config = replace(config, redis=replace(config.redis, url=env[ENV_REDIS_URL]))
    if env.get(ENV_REDIS_PASSWORD):
        config = replace(config, redis=replace(config.redis, password=env[ENV_REDIS_PASSWORD]))
    metrics_listen = _env_listen(env, ENV_METRICS_LISTEN)
    if metrics_listen is not None:
        config = replace(config, metrics=MetricsConfig(metrics_listen))
    usage_listen = _env_listen(env, ENV_USAGE_LISTEN)
    if usage_listen is not None:
        config = replace(config, usage=replace(config.usage, listen=usage_listen))
    if env.get(ENV_LOG_FILE):
        config = replace(config, log=replace(config.log, file=env[ENV_LOG_FILE]))
    return config
