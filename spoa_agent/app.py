"""The agent as HAProxy uses it: the `check-request` SPOE message and its answer.

This is where the server meets auth and policy: read the message's
arguments, authenticate, ask the policy, turn the Decision into variables,
log what was refused. The hot path (a cached key) answers without awaiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from spoa_agent import metrics
from spoa_agent.auth import Authenticator, AuthFailure, Principal, VerifierPool
from spoa_agent.auth.authenticator import MAX_CREDENTIAL
from spoa_agent.auth.hashing import SecretHasher
from spoa_agent.auth.jwt import JwtConfigError, JwtVerifier
from spoa_agent.config import Config, ConfigError, load_config
from spoa_agent.policy import Decision, RouteTable
from spoa_agent.policy.body import BodyFacts, BodyProblem, model_of
from spoa_agent.ratelimit.limiter import UNLIMITED, RateLimiter, Verdict, limit_key
from spoa_agent.ratelimit.limits import Limit, parse_rate
from spoa_agent.server import Actions, Agent, Handler
from spoa_agent.server.workers import worker_index
from spoa_agent.spop import Action, Message, SetVar, Value
from spoa_agent.store.redis import async_client, close, redacted, subscriber_client, warm_up
from spoa_agent.store.tokens import KeyLookup, follow_changes

CHECK_REQUEST = "check-request"
# Log actions of refusals: the client's doing (fail2ban's filter counts
# some) -> the same refusal when the gateway caused it (a 5xx), never counted.
GATEWAY_TROUBLE = {"auth_failed": "auth_unavailable", "policy_denied": "policy_unavailable",
                   "rate_limited": "ratelimit_unavailable"}


@functools.lru_cache(maxsize=1024)
def decision_vars(decision: Decision) -> tuple[Action, ...]:
    """Variables under txn.<var-prefix>.* that haproxy.cfg decides on.

    Cached: a decision is one of few (rule, outcome) pairs, and its variables
    are immutable, so each is built once.
    """
    return (
        SetVar("decision", "allow" if decision.allowed else "deny"),
        SetVar("status", decision.status),
        SetVar("reason", decision.reason),
        SetVar("rule", decision.rule),
    )


@functools.lru_cache(maxsize=4096)
def principal_vars(principal: Principal) -> tuple[Action, ...]:
    """Who asked: haproxy.cfg passes `principal` upstream as X-Spoa-Principal."""
    return (SetVar("principal", principal.name), SetVar("principal_id", principal.id))


def _text(args: Mapping[str, Value], key: str) -> str:
    value = args.get(key)
    return value if isinstance(value, str) else ""


def credential(args: Mapping[str, Value]) -> str | AuthFailure:
    """The token from `Authorization: Bearer` or `x-api-key`, or why there is none."""
    authorization = _header(args, "authorization")
    api_key = _header(args, "api_key")
    raw = authorization if authorization is not None else api_key
    if raw is None:
        return AuthFailure(401, "missing_credential")
    if len(raw) > MAX_CREDENTIAL:  # HAProxy cut it at MAX_CREDENTIAL + 1
        return AuthFailure(401, "oversized_credential")
    token = raw.strip()
    if authorization is not None:
        scheme, _, token = token.partition(" ")
        if scheme.lower() != "bearer":
            return AuthFailure(401, "malformed_credential")
    return token.strip() or AuthFailure(401, "malformed_credential")


def _header(args: Mapping[str, Value], key: str) -> str | None:
    # HAProxy sends NULL for a header the request does not have, and BINARY
    # once the `bytes()` converter has cut it (spoe-agent.conf).
    value = args.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def body_facts(args: Mapping[str, Value]) -> BodyFacts:
    """The request body and its framing, as HAProxy sent them."""
    body = args.get("body")
    return BodyFacts(_text(args, "method"), _header(args, "content_length"),
                     _header(args, "transfer_encoding"), _header(args, "content_encoding"),
                     body if isinstance(body, bytes) else b"")


def _refused(problem: BodyProblem, decision: Decision) -> Decision:
    return Decision(False, problem.status, problem.reason, decision.rule)


@dataclass(frozen=True, slots=True)
class Request:
    ip: Value
    method: str
    host: str
    path: str
    user_agent: str

    @classmethod
    def from_args(cls, args: Mapping[str, Value]) -> Request:
        return cls(args.get("ip"), _text(args, "method"), _text(args, "host"),
                   _text(args, "path"), _text(args, "user_agent"))


def ratelimit_vars(verdict: Verdict) -> tuple[Action, ...]:
    """What the client is told about its limit (haproxy.cfg turns it into headers)."""
    if verdict.limit is None:
        return ()
    rate = verdict.limit.rate
    out: tuple[Action, ...] = (
        SetVar("rl_scope", verdict.limit.scope), SetVar("rl_limit", rate.count),
        SetVar("rl_window", round(rate.period)), SetVar("rl_remaining", verdict.remaining),
        SetVar("rl_reset", verdict.reset),
    )
    if verdict.retry_after:
        out += (SetVar("retry_after", verdict.retry_after),)
    return out


_cached_rate = functools.lru_cache(maxsize=1024)(parse_rate)


def _who(principal: Principal | None) -> dict[str, str]:
    """The log fields naming the caller, once authenticated."""
    return {"key_id": principal.id, "principal": principal.name} if principal else {}


class RequestChecker:
    def __init__(self, config: Config, authenticator: Authenticator | None, log: Any) -> None:
        self.auth = authenticator
        self.limiter: RateLimiter | None = None  # set once Redis is connected
        self.log = log
        self.use(config)

    def use(self, config: Config) -> None:
        """Switch to this configuration's policy (at start and on SIGHUP).

        Each attribute is replaced whole, so a request sees either the old
        policy or the new one, never a mix of half of each."""
        routes = RouteTable(config.routes)
        jwt = JwtVerifier(config.auth.issuers)  # reads key files: may fail, before any change
        self.routes = routes
        self.limits = config.ratelimit
        self.log_successes = config.log.successes
        if self.auth is not None:
            self.auth.jwt = jwt

    def __call__(self, message: Message) -> Actions | Awaitable[Actions]:
        args = message.args
        started = time.perf_counter_ns()  # the agent's latency, in log lines
        decision = self.routes.decide(_text(args, "method"), _text(args, "path"),
                                      _text(args, "host"))
        if self.auth is None or (decision.route is not None and decision.route.public):
            # No keys here, or the upstream does its own login (its own
            # Authorization header must reach it untouched).
            return self._decide(args, decision, None, started)
        token = credential(args)
        if type(token) is AuthFailure:
            return self._decide(args, decision, token, started)
        assert isinstance(token, str)
        result = self.auth.quick(token)
        if result is None:
            return self._decide_later(args, decision, token, started)
        return self._decide(args, decision, result, started)

    async def _decide_later(self, args: Mapping[str, Value], decision: Decision, token: str,
                            started: int) -> Actions:
        assert self.auth is not None
        ip = args.get("ip")  # key checks are shared out fairly per client address
        result = self._decide(args, decision, await self.auth.verify_slow(
            token, None if ip is None else str(ip)), started)
        return result if isinstance(result, Sequence) else await result

    def _decide(self, args: Mapping[str, Value], decision: Decision,
                auth: Principal | AuthFailure | None,
                started: int) -> Actions | Awaitable[Actions]:
        if type(auth) is AuthFailure:
            self._log_denial("auth_failed", args, started, auth.status, auth.reason,
                             key_id=auth.key_id)
            return decision_vars(Decision(False, auth.status, auth.reason))
        principal = auth if type(auth) is Principal else None
        detail = ""
        if decision.allowed:
            decision, detail = self._route_checks(args, decision, principal)
        if not decision.allowed:
            self._log_denial("policy_denied", args, started, decision.status, decision.reason,
                             rule=decision.rule, detail=detail,
                             **_who(principal))
            out = decision_vars(decision)
            return (*out, SetVar("detail", detail)) if detail else out
        if self.limiter is not None:
            limits = self._limits_for(args, decision, principal)
            verdict = self.limiter.quick(limits)
            if verdict is None:
                return self._limit_later(args, decision, principal, limits, started)
            return self._answer(args, decision, principal, verdict, started)
        return self._answer(args, decision, principal, UNLIMITED, started)

    def _route_checks(self, args: Mapping[str, Value], decision: Decision,
                      principal: Principal | None) -> tuple[Decision, str]:
        """What the matched route and the key ask beyond the path: the key's
        own routes, scopes, the body size, the model. (Decision, detail)."""
        route = decision.route
        assert route is not None
        check_model = bool(principal is not None and principal.models and route.model_in_body)
        body: BodyFacts | None = None
        if route.max_body is not None or check_model:
            body = body_facts(args)
            length = body.length()
            if isinstance(length, BodyProblem):
                return _refused(length, decision), ""
            if route.max_body is not None and length > route.max_body:
                return Decision(False, 413, "body_too_large", decision.rule), str(route.max_body)
        if principal is None:
            return decision, ""
        if principal.routes and decision.rule not in principal.routes:
            return Decision(False, 403, "route_not_allowed_for_key", decision.rule), ""
        missing = route.scopes - principal.scopes
        if missing:
            return (Decision(False, 403, "missing_scope", decision.rule),
                    " ".join(sorted(missing)))
        if check_model:
            assert body is not None
            whole = body.whole()
            model = whole if isinstance(whole, BodyProblem) else model_of(whole)
            if isinstance(model, BodyProblem):
                return _refused(model, decision), ""
            if model not in principal.models:
                return Decision(False, 403, "model_not_allowed", decision.rule), model
        return decision, ""

    async def _limit_later(self, args: Mapping[str, Value], decision: Decision,
                           principal: Principal | None, limits: list[Limit],
                           started: int) -> Actions:
        assert self.limiter is not None
        return self._answer(args, decision, principal, await self.limiter.check(limits),
                            started)

    def _limits_for(self, args: Mapping[str, Value], decision: Decision,
                    principal: Principal | None) -> list[Limit]:
        """Every limit that applies: per key, per client address, per route, global."""
        config = self.limits
        limits = []
        if principal is not None:
            if principal.rate:
                limits.append(Limit("key", limit_key(principal.kind, principal.id),
                                    _cached_rate(principal.rate), config.on_redis_error))
            elif config.per_key is not None:
                limits.append(Limit("key", limit_key(principal.kind, principal.id),
                                    config.per_key.rate, config.per_key.on_redis_error))
        ip = args.get("ip")
        if config.per_ip is not None and ip is not None:
            limits.append(Limit("ip", limit_key("ip", str(ip)), config.per_ip.rate,
                                config.per_ip.on_redis_error))
        if decision.route is not None and decision.route.rate is not None:
            limits.append(Limit("route", limit_key("route", decision.rule),
                                decision.route.rate, config.on_redis_error))
        if config.global_ is not None:
            limits.append(Limit("global", limit_key("global", "all"), config.global_.rate,
                                config.global_.on_redis_error))
        return limits

    def _answer(self, args: Mapping[str, Value], decision: Decision,
                principal: Principal | None, verdict: Verdict, started: int) -> Actions:
        if decision.allowed and verdict.admitted and self.log_successes:
            self._log("info", "request_allowed", args, started, 200, decision.reason,
                      rule=decision.rule, **_who(principal))
        if not verdict.admitted:
            decision = Decision(False, verdict.status, verdict.reason, decision.rule)
            self._log_denial("rate_limited", args, started, verdict.status, verdict.reason,
                             rule=decision.rule, scope=verdict.limit.scope if verdict.limit else "",
                             **_who(principal))
        out = decision_vars(decision)
        if decision.route is not None and decision.route.public:
            out += (SetVar("own_login", True),)  # haproxy.cfg keeps the credentials
        if principal is not None:
            out += principal_vars(principal)
            in_flight = principal.max_in_flight or self.limits.per_key_in_flight
            if in_flight:
                out += (SetVar("max_in_flight", in_flight),)
        return out + ratelimit_vars(verdict) if verdict.limit is not None else out

    def _log_denial(self, action: str, args: Mapping[str, Value], started: int, status: int,
                    reason: str, **extra: str) -> None:
        """One line per refusal, under `action`, the client's doing; a 5xx is
        the gateway's own trouble (Redis down, key checks saturated) and goes
        under the action's *_unavailable twin, which fail2ban never counts."""
        if status >= 500:
            self._log("error", GATEWAY_TROUBLE[action], args, started, status, reason, **extra)
        else:
            self._log("warning", action, args, started, status, reason, **extra)

    def _log(self, level: str, action: str, args: Mapping[str, Value], started: int,
             status: int, reason: str, **extra: str) -> None:
        """One canonical line for a request (see logging.py for the key order)."""
        request = Request.from_args(args)  # only logged requests pay for it
        getattr(self.log, level)(
            action, ip=request.ip, reason=reason, method=request.method, host=request.host,
            path=request.path, user_agent=request.user_agent, status=status,
            duration=time.perf_counter_ns() - started,
            **{key: value for key, value in extra.items() if value},
        )


def build_agent(config: Config, log: Any) -> Agent:
    """The Agent with its check-request handler; Redis clients start with the loop."""
    agent = Agent()
    authenticator: Authenticator | None = None
    if config.auth.required:
        verifier = VerifierPool(SecretHasher(config.auth.argon2), config.auth.argon2_workers)
        authenticator = Authenticator(config.auth, None, verifier, log)
    checker = RequestChecker(config, authenticator, log)
    agent.register(CHECK_REQUEST, _measured(checker))
    if config.metrics.listen is not None:
        _serve_metrics(agent, config, checker, log)

    def reload() -> None:
        if config.source == "<defaults>":
            log.info("config_reload_skipped", error="no config file to read")
            return
        try:
            fresh = load_config(config.source)
            checker.use(fresh)
        except (ConfigError, JwtConfigError) as err:
            problems = err.problems if isinstance(err, ConfigError) else [str(err)]
            log.error("config_reload_failed", error="; ".join(problems),
                      reason="kept the running configuration")
            return
        log.info("config_reloaded", path=config.source, routes=len(fresh.routes))

    agent.reload.append(reload)
    rl = config.ratelimit
    # Keys may carry their own rate, so a gateway with keys always limits.
    limits = config.auth.required or any((rl.per_key, rl.per_ip, rl.global_)) \
        or any(route.rate for route in config.routes)
    if not limits:
        return agent
    clients: list[Any] = []  # redis.asyncio Redis or RedisCluster
    background: list[asyncio.Task[None]] = []

    async def connect_redis() -> None:
        # In the serving process's own loop (after --workers forks). Nothing
        # here waits for Redis: the agent starts and serves without it.
        if authenticator is not None:
            lookup = KeyLookup(async_client(config.redis.url, config.redis.timeout,
                                            config.redis.password))
            events = subscriber_client(config.redis.url, config.redis.password)
            clients.extend((lookup.client, events))
            authenticator.lookup = lookup
            background.append(asyncio.get_running_loop().create_task(
                follow_changes(events, authenticator.key_changed, log)))
        limiter_client = async_client(config.redis.url, rl.redis_timeout, config.redis.password)
        clients.append(limiter_client)
        checker.limiter = RateLimiter(limiter_client, log)
        if await checker.limiter.load() and await warm_up(limiter_client):
            log.info("redis_ready", url=redacted(config.redis.url))
        else:
            log.warning("redis_unavailable", url=redacted(config.redis.url),
                        error="starting anyway; limits follow on_redis_error until it answers")

    async def disconnect_redis() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in clients:
            await close(client)
        if authenticator is not None:
            authenticator.verifier.close()

    agent.startup.append(connect_redis)
    agent.shutdown.append(disconnect_redis)
    return agent


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    status: int
    reason: str
    rule: str
    principal: str | None


def explain(config: Config, method: str, path: str, host: str, ip: str,
            token: str | None, body: bytes | None = None) -> CheckResult:
    """What the agent would answer for this request (`spoa-agent check`).

    The same RequestChecker as in `serve`; without a token, as any valid key.
    The host and path as the client sends them (HAProxy's txn.host drops the
    port the same way); a body goes with its Content-Length.
    """
    # HTTP drops the whitespace around a header's value before anyone reads it.
    args: dict[str, Value] = {"method": method, "path": path, "host": host.strip(" \t"),
                              "ip": ipaddress.ip_address(ip), "user_agent": "spoa-agent check"}
    if body is not None:
        args.update(body=body, content_length=str(len(body)))
    quiet = structlog.wrap_logger(structlog.ReturnLogger())

    async def run() -> Actions:
        authenticator = None
        if token is not None:
            args["authorization"] = f"Bearer {token}"
            settings = config.auth
            lookup = KeyLookup(async_client(config.redis.url, max(config.redis.timeout, 2.0),
                                            config.redis.password))
            verifier = VerifierPool(SecretHasher(settings.argon2), 1)
            authenticator = Authenticator(settings, lookup, verifier, quiet)
        result = RequestChecker(config, authenticator, quiet)(Message(CHECK_REQUEST, args))
        try:
            return result if isinstance(result, Sequence) else await result
        finally:
            if authenticator is not None and authenticator.lookup is not None:
                await close(authenticator.lookup.client)
                authenticator.verifier.close()

    answer = {action.name: action.value for action in asyncio.run(run())
              if isinstance(action, SetVar)}
    principal = answer.get("principal")
    return CheckResult(answer["decision"] == "allow", int(str(answer["status"])),
                       str(answer["reason"]), str(answer["rule"]),
                       principal if isinstance(principal, str) else None)


def _count(actions: Actions, started: float) -> Actions:
    # decision_vars() always comes first: decision, status, reason, rule.
    decision, reason = actions[0], actions[2]
    if type(decision) is SetVar and type(reason) is SetVar:
        metrics.count_decision(str(decision.value), str(reason.value),
                               time.perf_counter() - started)
    return actions


def _measured(checker: RequestChecker) -> Handler:
    """The checker, counting decisions and their time for Prometheus."""

    async def later(pending: Awaitable[Actions], started: float) -> Actions:
        return _count(await pending, started)

    def handle(message: Message) -> Actions | Awaitable[Actions]:
        started = time.perf_counter()
        result = checker(message)
        if isinstance(result, Sequence):
            return _count(result, started)
        return later(result, started)

    return handle


def _serve_metrics(agent: Agent, config: Config, checker: RequestChecker, log: Any) -> None:
    servers: list[asyncio.Server] = []

    async def health() -> dict[str, Any]:
        report: dict[str, Any] = {"status": "ok", "config": config.source,
                                  "routes": len(checker.routes.routes),
                                  "worker": worker_index()}
        limiter = checker.limiter
        if limiter is not None:
            try:
                async with asyncio.timeout(0.25):
                    report["redis"] = bool(await limiter.client.ping())
            except Exception:  # any failure means: not reachable now
                report["redis"] = False
            report["ratelimit_breaker"] = limiter.breaker.state
            if not report["redis"]:
                report["status"] = "degraded"
        return report

    async def start() -> None:
        listen = config.metrics.listen
        assert listen is not None
        port = listen.port + worker_index()
        try:
            servers.append(await metrics.start_server(listen.host, port, health))
            log.info("metrics_listening", listen=f"{listen.host}:{port}")
        except OSError as err:  # the agent serves on; only metrics are missing
            log.error("metrics_listen_failed", listen=f"{listen.host}:{port}",
                      error=err.strerror)

    async def stop() -> None:
        for server in servers:
            server.close()

    agent.startup.append(start)
    agent.shutdown.append(stop)
