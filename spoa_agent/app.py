"""The agent as HAProxy uses it: the `check-request` SPOE message, decided.

One pipeline per request: the message parsed once into a CheckRequest, the
caller authenticated (cached key or JWT at once; argon2id off the loop for a
key not seen yet), the route and the access rules decided (pure, policy/),
the limits planned (pure, ratelimit/) and checked in Redis with every other
request of the loop turn in one script call, and the Outcome rendered once
into SPOP variables, logged and counted. A request that needs only Redis is
answered Later, from the batch's callback: no Task or timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from spoa_agent import metrics
from spoa_agent.auth import Authenticator, AuthFailure, Principal, VerifierPool
from spoa_agent.auth.hashing import SecretHasher
from spoa_agent.auth.jwt import JwtConfigError, JwtVerifier
from spoa_agent.config import Config, ConfigError, load_config
from spoa_agent.oidc import flow as oidc
from spoa_agent.outcome import MODEL_LISTS, Outcome, Stage, models_var, render
from spoa_agent.policy import Decision, RouteTable
from spoa_agent.policy.access import check_access
from spoa_agent.policy.routes import refuse
from spoa_agent.ratelimit.limiter import RateLimiter, Verdict
from spoa_agent.ratelimit.limits import Limit, OnRedisError
from spoa_agent.ratelimit.plan import plan_limits
from spoa_agent.reasons import Reason
from spoa_agent.request import ARGS, CheckRequest, credential
from spoa_agent.server import Actions, Agent, Later
from spoa_agent.server.workers import worker_index
from spoa_agent.spop import Message, Value
from spoa_agent.store.redis import async_client, close, redacted, subscriber_client, warm_up
from spoa_agent.store.tokens import KeyLookup, follow_changes
from spoa_agent.usage.ingest import serve_usage

CHECK_REQUEST: Final = "check-request"
PLAN_CACHE_SIZE: Final = 65536  # limit plans kept, (caller, address, rule) each
# The log action of a refusal, by the step that refused: the client's doing
# (fail2ban's filter counts some)...
CLIENT_ACTIONS: Final[dict[Stage, str]] = {"auth": "auth_failed", "policy": "policy_denied",
                                           "limit": "rate_limited",
                                           "budget": "token_budget_exhausted"}
# ...and the same refusal when the gateway caused it (a 5xx), never counted.
GATEWAY_ACTIONS: Final[dict[Stage, str]] = {"auth": "auth_unavailable",
                                            "policy": "policy_unavailable",
                                            "limit": "ratelimit_unavailable",
                                            "budget": "ratelimit_unavailable"}
# No key on an auth = "oidc" route: HAProxy asks again with the browser's
# cookies (oidc-request, spoa_agent/oidc), whose answer is logged.
LOGIN_REQUIRED: Final = Outcome(refuse(Reason.LOGIN_REQUIRED), "auth")


# The steps that wait on Redis: plain slotted classes, for the reason of
# Record (spoa_agent/record.py), without its equality.
class _KeyCheck:
    """Next: the key's Redis lookup and argon2id check (quick() had no answer)."""

    __slots__ = ("decision", "token")

    def __init__(self, decision: Decision, token: str) -> None:
        self.decision, self.token = decision, token


class _DeviceCheck:
    """Next: the device's record in Redis (its certificate not in the caches)."""

    __slots__ = ("decision", "fingerprint")

    def __init__(self, decision: Decision, fingerprint: str) -> None:
        self.decision, self.fingerprint = decision, fingerprint


class _LimitCheck:
    """Next: these limits, in Redis (the over-limit cache had no answer)."""

    __slots__ = ("decision", "limits", "principal")

    def __init__(self, decision: Decision, principal: Principal | None,
                 limits: tuple[Limit, ...]) -> None:
        self.decision, self.principal, self.limits = decision, principal, limits


Step = Outcome | _DeviceCheck | _KeyCheck | _LimitCheck


class _LimitsAnswer(Later):
    """The answer of a request waiting on the limiter, which calls its
    verdict() from the batch's callback: one object per such request. (A
    named method, not __call__: mypyc miscompiles a subclass's __call__
    that calls an inherited method, and this class is compiled, setup.py.)"""

    __slots__ = ("checker", "request", "started", "step")

    def __init__(self, checker: RequestChecker, step: _LimitCheck, request: CheckRequest,
                 started: int) -> None:
        super().__init__()
        self.checker, self.step, self.request, self.started = checker, step, request, started

    def verdict(self, verdict: Verdict) -> None:
        checker = self.checker
        self.answer(checker.finish(checker.limited(self.step, verdict), self.request,
                                   self.started))


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
        # Reads key files: may fail, before any change. Keys fetched from a
        # URL are kept across a reload when the issuer's settings are the same.
        jwt = JwtVerifier(config.auth.issuers, self.auth.jwt if self.auth else None, self.log)
        self.routes = routes
        self.limits = config.ratelimit
        # Budgets per model for every key: the body's model is read for each.
        self.model_budgets = bool(config.ratelimit.tokens_per_model)
        self._plans: dict[object, tuple[Limit, ...]] = {}  # of this policy only
        self.log_successes = config.log.successes
        if self.auth is not None:
            self.auth.jwt = jwt

    # --- the handler HAProxy's messages reach --------------------------------

    def check_values(self, values: list[Value]) -> Actions | Later | Awaitable[Actions]:
        """The handler: the check-request message's values of ARGS."""
        started = time.perf_counter_ns()  # the agent's own time, in logs and metrics
        request = CheckRequest.from_values(values)
        step = self.decide(request)
        if type(step) is Outcome:
            return self.finish(step, request, started)
        if type(step) is _LimitCheck and self.limiter is not None:
            later = _LimitsAnswer(self, step, request, started)
            self.limiter.submit(step.limits, later.verdict)
            return later
        return self._finish_later(request, step, started)

    def __call__(self, message: Message) -> Actions | Later | Awaitable[Actions]:
        """check_values() for the message by name (tests)."""
        return self.check_values([message.args.get(name) for name in ARGS])

    async def _finish_later(self, request: CheckRequest, step: Step, started: int) -> Actions:
        return self.finish(await self.resolve(request, step), request, started)

    # --- the pipeline ----------------------------------------------------------

    async def evaluate(self, request: CheckRequest) -> Outcome:
        """The whole pipeline, awaited (`spoa-agent check`)."""
        return await self.resolve(request, self.decide(request))

    async def resolve(self, request: CheckRequest, step: Step) -> Outcome:
        """The steps that wait on I/O, awaited one after the other."""
        if type(step) is _DeviceCheck:
            assert self.auth is not None
            step = self._after_device(request, step.decision,
                                      await self.auth.verify_device(step.fingerprint))
        if type(step) is _KeyCheck:
            assert self.auth is not None
            # Key checks are shared out fairly per client address.
            found = await self.auth.verify_slow(step.token, request.ip or None)
            step = self.after_auth(request, step.decision, found)
        if type(step) is _LimitCheck:
            assert self.limiter is not None
            step = self.limited(step, await self.limiter.check(step.limits))
        assert type(step) is Outcome
        return step

    def decide(self, request: CheckRequest) -> Step:
        """As far as the request goes without waiting: an Outcome, or the next
        step that waits on Redis (a key lookup, or limits)."""
        decision = self.routes.decide(request.method, request.path, request.host)
        if self.auth is None or (decision.route is not None and decision.route.public):
            # No keys here, or the upstream does its own login (its own
            # Authorization header must reach it untouched).
            return self.after_auth(request, decision, None)
        if request.device is not None:  # a certificate HAProxy verified
            device = self.auth.device_quick(request.device)
            if device is None:
                return _DeviceCheck(decision, request.device)
            return self._after_device(request, decision, device)
        return self._by_credential(request, decision, None)

    def _after_device(self, request: CheckRequest, decision: Decision,
                      device: Principal | AuthFailure) -> Step:
        """A registered device is the caller; an unknown or revoked one is
        no credential: the request's key or JWT decides, if it has one."""
        if type(device) is AuthFailure and not device.reason.gateway_fault:
            return self._by_credential(request, decision, device)
        return self.after_auth(request, decision, device)

    def _by_credential(self, request: CheckRequest, decision: Decision,
                       device: AuthFailure | None) -> Step:
        assert self.auth is not None
        token = credential(request.authorization, request.api_key)
        if type(token) is Reason:
            if token is Reason.MISSING_CREDENTIAL and decision.route is not None \
                    and decision.route.oidc:
                # A browser signs in, whatever certificate it also showed.
                return LOGIN_REQUIRED  # haproxy.cfg sends oidc-request (spoa_agent/oidc)
            if device is not None and token is Reason.MISSING_CREDENTIAL:
                return Outcome(refuse(device.reason), "auth", key_id=device.key_id)
            return Outcome(refuse(token), "auth")
        assert isinstance(token, str)
        found = self.auth.quick(token)
        if found is None:
            return _KeyCheck(decision, token)
        return self.after_auth(request, decision, found)

    def after_auth(self, request: CheckRequest, decision: Decision,
                   auth: Principal | AuthFailure | None) -> Outcome | _LimitCheck:
        if type(auth) is AuthFailure:
            return Outcome(refuse(auth.reason), "auth", key_id=auth.key_id)
        principal = auth if type(auth) is Principal else None
        if decision.allowed:
            model_budgets = self.model_budgets or bool(principal and principal.model_tokens)
            decision = check_access(decision, principal, request.body, request.path,
                                    model_budgets)
        if not decision.allowed:
            return Outcome(decision, "policy", principal)
        if self.limiter is None:
            if principal is None:  # routes only: nothing more to tell
                return Outcome(decision, "allowed")
            return Outcome(decision, "allowed", principal,
                           max_in_flight=self._in_flight_for(principal))
        limits = self._plan(principal, request.ip, decision)
        verdict = self.limiter.quick(limits)
        if verdict is None:
            return _LimitCheck(decision, principal, limits)
        return self.limited(_LimitCheck(decision, principal, limits), verdict)

    def _plan(self, principal: Principal | None, ip: str,
              decision: Decision) -> tuple[Limit, ...]:
        # The same caller from the same address on the same rule gets the
        # same immutable plan: its limit keys are built once, not per request.
        key = (principal.kind, principal.id, principal.rate, principal.tokens,
               principal.model_tokens) if principal else None, ip, decision.rule, decision.model
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            route = decision.route
            plan = self._plans[key] = plan_limits(
                self.limits, principal, ip, decision.rule,
                route.rate if route is not None else None, decision.model)
        return plan

    def limited(self, step: _LimitCheck, verdict: Verdict) -> Outcome:
        decision = step.decision
        stage: Stage = "allowed"
        if not verdict.admitted:
            assert verdict.reason is not None
            decision = refuse(verdict.reason, decision.rule)
            stage = "budget" if verdict.reason is Reason.TOKEN_BUDGET_EXHAUSTED else "limit"
        principal, limits = step.principal, step.limits
        # plan_limits() puts the token budget last.
        budget = limits[-1] if limits and limits[-1].is_budget else None
        return Outcome(decision, stage, principal, "", verdict, self._in_flight_for(principal),
                       budget)

    def _in_flight_for(self, principal: Principal | None) -> int:
        if principal is None:
            return 0
        return principal.max_in_flight or self.limits.per_key_in_flight

    # --- the answer --------------------------------------------------------------

    def finish(self, outcome: Outcome, request: CheckRequest, started: int) -> Actions:
        """Log and count the outcome, then render it for HAProxy."""
        decision = outcome.decision
        elapsed = time.perf_counter_ns() - started
        metrics.count_decision("allow" if decision.allowed else "deny", str(decision.reason),
                               elapsed / 1e9)
        if not decision.allowed:
            reason = decision.reason
            if reason is Reason.LOGIN_REQUIRED:
                pass  # not an answer yet: the oidc-request that follows is logged
            elif isinstance(reason, Reason) and reason.gateway_fault:
                self._log("error", GATEWAY_ACTIONS[outcome.stage], outcome, request, elapsed)
            else:
                self._log("warning", CLIENT_ACTIONS[outcome.stage], outcome, request, elapsed)
        elif self.log_successes:
            self._log("info", "request_allowed", outcome, request, elapsed)
        actions = render(outcome)
        principal = outcome.principal
        if decision.allowed and principal is not None and principal.models \
                and request.path in MODEL_LISTS:
            # The gateway answers the list itself (lua/spoa_deny.lua): a key
            # sees only the models it may use.
            return (*actions, models_var(principal.models))
        return actions

    def _log(self, level: str, action: str, outcome: Outcome, request: CheckRequest,
             elapsed: int) -> None:
        """One canonical line for a request (see logging.py for the key order)."""
        decision, principal = outcome.decision, outcome.principal
        extra = {"rule": decision.rule, "detail": decision.detail,
                 "scope": outcome.verdict.limit.scope
                 if outcome.stage in ("limit", "budget") and outcome.verdict.limit else "",
                 "key_id": principal.id if principal else outcome.key_id,
                 "principal": principal.name if principal else ""}
        getattr(self.log, level)(
            action, ip=request.ip, reason=str(decision.reason), method=request.method,
            host=request.host, path=request.path, user_agent=request.user_agent,
            status=decision.status, duration=elapsed,
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
    agent.register_values(CHECK_REQUEST, ARGS, checker.check_values)
    oidc.register(agent, config, checker, log)  # browser sign-in, with an [oidc] table
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
                follow_changes(events, authenticator.key_changed, log, forget_while_deaf=(
                    config.auth.on_redis_error is OnRedisError.CLOSED))))
        limiter_client = async_client(config.redis.url, rl.redis_timeout, config.redis.password)
        clients.append(limiter_client)
        checker.limiter = RateLimiter(limiter_client, log,
                                      give_up_after=config.server.handler_timeout)
        await start_usage()
        if await checker.limiter.load() and await warm_up(limiter_client):
            log.info("redis_ready", url=redacted(config.redis.url))
        else:
            log.warning("redis_unavailable", url=redacted(config.redis.url),
                        error="starting anyway; limits follow on_redis_error until it answers")

    servers: list[asyncio.Server] = []

    async def start_usage() -> None:
        # HAProxy's Lua sends each answer's usage here (spoa_agent/usage).
        if config.usage.listen is None:
            return
        client = async_client(config.redis.url, config.redis.timeout, config.redis.password)
        clients.append(client)
        try:
            server = await serve_usage(client, config.usage, log,
                                       reuse_port=config.server.workers > 1)
        except OSError as err:  # SPOP is served still; HAProxy keeps the records
            log.error("usage_listen_failed", listen=str(config.usage.listen),
                      error=err.strerror)
            return
        if server is not None:
            servers.append(server)

    async def disconnect_redis() -> None:
        for server in servers:
            server.close()
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
            token: str | None, body: bytes | None = None,
            device: str | None = None) -> CheckResult:
    """What the agent would answer for this request (`spoa-agent check`).

    The same RequestChecker as in `serve`; without a token or a device
    certificate's SHA-256 (as HAProxy would send it), as any valid key.
    The host and path as the client sends them (HAProxy's txn.host drops the
    port the same way); a body goes with its Content-Length.
    """
    # HTTP drops the whitespace around a header's value before anyone reads it.
    args: dict[str, Value] = {"method": method, "path": path, "host": host.strip(" \t"),
                              "ip": ipaddress.ip_address(ip), "user_agent": "spoa-agent check"}
    if body is not None:
        args.update(body=body, content_length=str(len(body)))
    if device is not None:
        args["device"] = device
    quiet = structlog.wrap_logger(structlog.ReturnLogger())

    async def run() -> Outcome:
        authenticator = None
        if token is not None:
            args["authorization"] = f"Bearer {token}"
        if token is not None or device is not None:
            settings = config.auth
            lookup = KeyLookup(async_client(config.redis.url, max(config.redis.timeout, 2.0),
                                            config.redis.password))
            verifier = VerifierPool(SecretHasher(settings.argon2), 1)
            authenticator = Authenticator(settings, lookup, verifier, quiet)
        try:
            return await RequestChecker(config, authenticator, quiet).evaluate(
                CheckRequest.from_args(args))
        finally:
            if authenticator is not None and authenticator.lookup is not None:
                await close(authenticator.lookup.client)
                authenticator.verifier.close()

    outcome = asyncio.run(run())
    decision = outcome.decision
    return CheckResult(decision.allowed, decision.status, str(decision.reason), decision.rule,
                       outcome.principal.name if outcome.principal else None)


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
