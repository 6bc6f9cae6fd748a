"""Browser sign-in for routes with auth = "oidc": the `oidc-request` SPOE
message, which haproxy.cfg sends only when check-request answered
`login_required` (such a route, and no key or JWT).

The agent answers with variables only; HAProxy turns them into the answer:
decision "allow" goes on to the upstream with the identity variables (user,
email, groups -> X-Spoa-* headers), "deny" is rendered by lua/spoa_deny.lua
in the API's dialect, and "oidc" by lua/spoa_oidc.lua: a redirect with its
Set-Cookie headers, or a small HTML page. The callback and the logout live
under /.spoa-agent/oidc/ on the host the browser asked for.

The sign-in is bound to the browser that started it: the secret in its
login cookie is checked against the state's record, and the PKCE verifier
and the nonce are derived from that secret, so Redis holds neither. The
return URL is the path and query of the request that needed the sign-in,
kept in Redis, never read from a parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from spoa_agent import metrics
from spoa_agent.auth.principal import Principal
from spoa_agent.oidc.provider import LoginError, Provider
from spoa_agent.oidc.sessions import Session, SessionStore, digest, new_secret
from spoa_agent.oidc.settings import OidcSettings
from spoa_agent.outcome import Outcome, render
from spoa_agent.policy.routes import Route, normalize_host, refuse
from spoa_agent.reasons import Reason
from spoa_agent.request import CheckRequest
from spoa_agent.server import Actions
from spoa_agent.spop import SetVar, Value
from spoa_agent.store.redis import async_client, close

if TYPE_CHECKING:
    from spoa_agent.app import RequestChecker

OIDC_REQUEST = "oidc-request"
# The message's arguments (spoe-agent.conf), in this order.
OIDC_ARGS = ("ip", "method", "host", "authority", "path", "query", "user_agent", "accept",
             "fetch_mode", "tls", "session", "plain_session", "login", "plain_login")
PREFIX = "/.spoa-agent/oidc/"
CALLBACK, LOGOUT, SIGNED_OUT = PREFIX + "callback", PREFIX + "logout", PREFIX + "signed-out"
SESSION_COOKIE, LOGIN_COOKIE = "spoa_session", "spoa_login"
MAX_RETURN = 2000  # characters of a return URL kept


class OidcRequest(NamedTuple):
    ip: Value
    method: str
    host: str
    authority: str
    path: str
    query: str
    user_agent: str
    navigation: bool  # a browser loading a page, not a script or an API client
    tls: bool
    session: str  # the cookies' values ("" when absent): under TLS only the
    login: str    # __Host- ones count, which no plain-HTTP page can set

    @classmethod
    def from_values(cls, values: list[Value]) -> OidcRequest:
        (ip, method, host, authority, path, query, agent, accept, mode, tls, session,
         plain_session, login, plain_login) = (_text(v) if i not in (0, 9) else v
                                               for i, v in enumerate(values))
        secure = tls is True
        method, accept, mode = str(method), str(accept).lower(), str(mode).lower()
        navigation = mode == "navigate" if mode else (
            method in ("GET", "HEAD") and "text/html" in accept)
        return cls(ip, method, str(host), str(authority).lower(), str(path), str(query),
                   str(agent), navigation, secure,
                   str(session if secure else plain_session),
                   str(login if secure else plain_login))

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"

    def check_request(self) -> CheckRequest:
        return CheckRequest.from_args({"ip": self.ip, "method": self.method, "host": self.host,
                                       "path": self.path, "user_agent": self.user_agent})


def _text(value: Value) -> str:
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    return ""


def cookie(name: str, value: str, tls: bool, max_age: int) -> str:
    """A Set-Cookie value: __Host- (Secure, Path=/, no Domain) under TLS."""
    full = f"__Host-{name}" if tls else name
    return (f"{full}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
            + ("; Secure" if tls else ""))


def header_safe(text: str, limit: int = 500) -> str:
    """Printable text for a request header (claims come from the provider)."""
    return "".join(c for c in text if c.isprintable())[:limit]


def allowed(route: Route, session: Session) -> bool:
    if not route.allow_groups and not route.allow_emails and not route.allow_claims:
        return True
    return bool(route.allow_groups.intersection(session.groups)) or (
        session.email.lower() in route.allow_emails) or any(
        values.intersection(session.claim(name)) for name, values in route.allow_claims)


# Claims that say nothing about who the user is, and the ones kept apart.
_NOT_KEPT = frozenset({"iss", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash",
                       "c_hash", "azp", "sid", "jti", "acr", "amr", "sub", "email"})
MAX_CLAIMS = 30  # claims kept per session, 20 values each, 200 characters a value


def kept_claims(claims: dict[str, Any],
                groups_claim: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The ID token's claims with text values (a string, number, boolean or a
    list of strings), for routes' allow_claims; bounded in size."""
    kept: list[tuple[str, tuple[str, ...]]] = []
    for name, value in sorted(claims.items()):
        if name in _NOT_KEPT or name == groups_claim or len(kept) >= MAX_CLAIMS:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, str | int | float):
            value = [str(value)]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            kept.append((str(name)[:100], tuple(v[:200] for v in value[:20])))
    return tuple(kept)


def answer(status: int, *, location: str = "", cookies: tuple[str, ...] = (), page: str = "",
           user: str = "") -> Actions:
    """What lua/spoa_oidc.lua answers the browser."""
    actions = [SetVar("decision", "oidc"), SetVar("status", status)]
    if location:
        actions.append(SetVar("oidc_location", location))
    for index, value in enumerate(cookies[:2]):
        actions.append(SetVar(f"oidc_cookie{index + 1}", value))
    if page:
        actions.append(SetVar("oidc_page", page))
    if user:
        actions.append(SetVar("oidc_user", header_safe(user, 200)))
    return actions


class OidcFlow:
    def __init__(self, settings: OidcSettings, checker: RequestChecker, log: Any) -> None:
        self.settings, self.checker, self.log = settings, checker, log
        self.provider = Provider(settings, log)
        self.store: SessionStore | None = None  # set once Redis is connected

    async def handle(self, values: list[Value]) -> Actions:
        started = time.perf_counter_ns()
        request = OidcRequest.from_values(values)
        creq = request.check_request()
        if normalize_host(request.authority) != request.host or not request.host:
            return self.checker.finish(Outcome(refuse(Reason.AMBIGUOUS_HOST), "auth"), creq,
                                       started)
        if self.store is None:
            return self._unavailable(creq, started, "no Redis yet")
        try:
            if request.path == CALLBACK:
                return await self.callback(request)
            if request.path == LOGOUT:
                return await self.logout(request)
            if request.path == SIGNED_OUT:
                return answer(200, page="signed_out")
            return await self.regular(request, creq, started)
        except (redis.RedisError, OSError) as err:
            return self._unavailable(creq, started, str(err))
        except LoginError as err:  # the provider cannot be reached or read
            metrics.OIDC_LOGINS.labels("error").inc()
            self.log.error("login_unavailable", ip=creq.ip, host=request.host, error=str(err))
            return answer(503, page="unavailable")

    def _unavailable(self, creq: CheckRequest, started: int, error: str) -> Actions:
        self.log.error("session_store_error", error=error)
        return self.checker.finish(Outcome(refuse(Reason.SESSION_UNAVAILABLE), "auth"), creq,
                                   started)

    async def regular(self, request: OidcRequest, creq: CheckRequest, started: int) -> Actions:
        assert self.store is not None
        decision = self.checker.routes.decide(creq.method, creq.path, creq.host)
        route = decision.route
        session = await self.store.get(request.session) if request.session else None
        if route is None or not route.oidc:
            # The agent's route table changed since check-request: as any request.
            return self.checker.finish(Outcome(decision if not decision.allowed else refuse(
                Reason.MISSING_CREDENTIAL), "auth"), creq, started)
        if session is None:
            if request.navigation:
                return await self.start_login(request)
            return self.checker.finish(Outcome(refuse(Reason.MISSING_CREDENTIAL), "auth"),
                                       creq, started)
        principal = Principal(kind="session", id=session.id,
                              name=session.email or session.name or session.sub)
        if not allowed(route, session):
            # Logged here, not as policy_denied: fail2ban must not ban a
            # signed-in user for reloading the page that says no.
            refused = Outcome(refuse(Reason.USER_NOT_ALLOWED, decision.rule), "policy", principal)
            metrics.count_decision("deny", Reason.USER_NOT_ALLOWED,
                                   (time.perf_counter_ns() - started) / 1e9)
            self.log.warning("login_refused", ip=creq.ip, reason=str(Reason.USER_NOT_ALLOWED),
                             method=creq.method, host=creq.host, path=creq.path,
                             status=403, rule=decision.rule, principal=principal.name,
                             session_id=session.id)
            if request.navigation:
                return answer(403, page="refused", user=principal.name)
            return render(refused)
        step = self.checker.after_auth(creq, decision, principal)
        outcome = step if type(step) is Outcome else await self.checker.resolve(creq, step)
        actions = self.checker.finish(outcome, creq, started)
        if not outcome.decision.allowed:
            return actions
        return (*actions, SetVar("user", header_safe(session.name or session.sub)),
                SetVar("email", header_safe(session.email)),
                SetVar("groups", header_safe(",".join(session.groups), 2000)))

    async def start_login(self, request: OidcRequest) -> Actions:
        assert self.store is not None
        state, binding = new_secret(), new_secret()
        back = request.path + (f"?{request.query}" if request.query else "")
        if not back.startswith("/") or back.startswith("//") or "\\" in back \
                or back.startswith(PREFIX) or len(back) > MAX_RETURN:
            back = "/"
        await self.store.save_state(state, {"binding": digest(binding), "return_to": back,
                                            "authority": request.authority,
                                            "tls": "1" if request.tls else "0"})
        url = await self.provider.authorization_url(request.base + CALLBACK, state, binding)
        metrics.OIDC_LOGINS.labels("redirect").inc()
        self.log.info("login_redirect", ip=str(request.ip), host=request.host,
                      path=request.path)
        return answer(302, location=url,
                      cookies=(cookie(LOGIN_COOKIE, binding, request.tls, 600),))

    async def callback(self, request: OidcRequest) -> Actions:
        assert self.store is not None
        params = urllib.parse.parse_qs(request.query, max_num_fields=20)
        state = params.get("state", [""])[0]
        record = await self.store.take_state(state) if state else None
        clear_login = cookie(LOGIN_COOKIE, "", request.tls, 0)
        problem = ""
        if "error" in params:
            problem = f"the provider answered {params['error'][0][:100]!r}"
        elif record is None:
            problem = "unknown, expired or used state"
        elif not request.login or not hmac.compare_digest(digest(request.login),
                                                          record.get("binding", "")):
            problem = "the state belongs to another browser (login cookie)"
        elif record.get("authority") != request.authority or \
                record.get("tls") != ("1" if request.tls else "0"):
            problem = "the callback came to another host than the sign-in started on"
        elif not params.get("code"):
            problem = "no code"
        elif params.get("iss", [self.settings.issuer])[0] != self.settings.issuer:
            # RFC 9207: a response from another provider (a mix-up attack).
            problem = "the response names another issuer"
        if problem or record is None:
            return self._failed(request, problem, clear_login)
        redirect_uri = request.base + CALLBACK
        try:
            claims = await self.provider.sign_in(params["code"][0], redirect_uri, request.login)
        except LoginError as err:
            return self._failed(request, str(err), clear_login)
        groups = claims.get(self.settings.groups_claim, [])
        groups = [groups] if isinstance(groups, str) else groups
        email = claims.get("email")
        name = claims.get("preferred_username") or email or claims["sub"]
        secret, session = await self.store.create(
            str(claims["sub"]), str(email) if isinstance(email, str) else "",
            tuple(str(g) for g in groups) if isinstance(groups, list) else (), str(name),
            kept_claims(claims, self.settings.groups_claim))
        metrics.OIDC_LOGINS.labels("success").inc()
        self.log.info("login_succeeded", ip=str(request.ip), host=request.host,
                      principal=session.email or session.name, session_id=session.id)
        lifetime = round(self.settings.absolute_lifetime)
        return answer(302, location=record.get("return_to", "/"), cookies=(
            cookie(SESSION_COOKIE, secret, request.tls, lifetime), clear_login))

    def _failed(self, request: OidcRequest, problem: str, clear_login: str) -> Actions:
        metrics.OIDC_LOGINS.labels("failed").inc()
        # Not a credential failure: fail2ban's filter counts none of these.
        self.log.warning("login_failed", ip=str(request.ip), host=request.host, error=problem)
        return answer(400, page="failed", cookies=(clear_login,))

    async def logout(self, request: OidcRequest) -> Actions:
        assert self.store is not None
        if request.session:
            await self.store.end(request.session)
            self.log.info("logout", ip=str(request.ip), host=request.host,
                          session_id=digest(request.session))
        signed_out = request.base + SIGNED_OUT
        location = await self.provider.end_session_url(signed_out) or signed_out
        return answer(302, location=location,
                      cookies=(cookie(SESSION_COOKIE, "", request.tls, 0),))


SESSIONS_EVERY = 15.0  # seconds between readings of the session count (metrics)


def register(agent: Any, config: Any, checker: RequestChecker, log: Any) -> OidcFlow | None:
    """The oidc-request handler on `agent`, with its Redis client started and
    stopped with the serving loop; None without an [oidc] table."""
    settings: OidcSettings | None = config.oidc
    if settings is None:
        return None
    flow = OidcFlow(settings, checker, log)
    agent.register_values(OIDC_REQUEST, OIDC_ARGS, flow.handle)
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        client = async_client(config.redis.url, config.redis.timeout, config.redis.password)
        flow.store = SessionStore(client, settings.idle_lifetime, settings.absolute_lifetime)
        tasks.append(asyncio.get_running_loop().create_task(count_sessions()))

    async def count_sessions() -> None:
        while True:
            if flow.store is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    metrics.SESSIONS.set(await flow.store.count())
            await asyncio.sleep(SESSIONS_EVERY)

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if flow.store is not None:
            await close(flow.store.client)

    agent.startup.append(start)
    agent.shutdown.append(stop)
    return flow
