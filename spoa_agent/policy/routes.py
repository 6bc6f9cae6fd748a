"""Route allowlist: which requests may pass, per host. Pure, no I/O.

Default deny: a request no rule allows is refused. Per host, exact paths are
one dict lookup, templates (`/v1/models/{model}`) one compiled regex, and
prefixes a short list, longest first. Paths are matched as HAProxy's `path`
fetch gives them, byte for byte: an encoded, doubled or dotted spelling of an
allowed path matches nothing and is refused, and a prefix never admits a
path with dot segments, `//` or encoded `.` or `/`, which an upstream might
resolve to somewhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from spoa_agent.ratelimit.limits import Rate
from spoa_agent.reasons import Reason

# One path segment of a template: what model names and ids use, and never a
# "." or ".." segment, "%" escapes or "/".
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._:@+-]*"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSAFE: Final = re.compile(r"/\.{1,2}(?:/|$)|//|%2[eEfF]|%5[cC]|\\")
_HOST = re.compile(r"(?:\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
# (method, path, host) decisions kept per table, of paths and hosts this
# short: a few MiB at most, whatever the clients send.
DECISION_CACHE_SIZE = 8192
CACHED_REQUEST_SIZE: Final = 512
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteError(ValueError):
    """A route that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # exact, a template, or with prefix=True the start of paths
    methods: frozenset[str]
    name: str = ""
    rate: Rate | None = None  # shared by every caller of this route
    host: str = ""  # "" any host; "api.example.com"; "*.example.com"
    prefix: bool = False
    scopes: frozenset[str] = frozenset()  # a key needs all of them
    public: bool = False  # the upstream does its own login: no key asked for
    # auth = "oidc": a browser without a key signs in (spoa_agent/oidc), and
    # its session's user must be in one of these groups, have one of these
    # emails or one of the claim values below (all empty: any user of the
    # provider).
    oidc: bool = False
    allow_groups: frozenset[str] = frozenset()
    allow_emails: frozenset[str] = frozenset()
    # ...or an ID token claim holding one of these values: (claim, values) pairs.
    allow_claims: tuple[tuple[str, frozenset[str]], ...] = ()
    max_body: int | None = None  # bytes (Content-Length)
    model_in_body: bool = False  # the JSON body names a model: key model lists apply
    preset: str = ""  # where it came from, for messages

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise RouteError(f"path {self.path!r} must start with '/'")
        if not self.methods:
            raise RouteError("methods must name at least one method")
        unknown = self.methods - METHODS
        if unknown:
            raise RouteError(f"unknown methods {sorted(unknown)}")
        leftover = _PARAM.sub("", self.path)
        if "{" in leftover or "}" in leftover:
            raise RouteError(f"bad template {self.path!r}: use {{name}} for a whole segment")
        if self.prefix and self.is_template:
            raise RouteError("a prefix cannot be a template")
        if self.prefix and not self.path.endswith("/"):
            raise RouteError(f"prefix {self.path!r} must end with '/' (a whole segment)")
        if self.host and not _HOST.fullmatch(self.host):
            raise RouteError(f"bad host {self.host!r}: a name, or *.domain")

    @property
    def label(self) -> str:
        return self.name or f"{'|'.join(sorted(self.methods))} {self.path}"

    @property
    def is_template(self) -> bool:
        return "{" in self.path


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int
    reason: str  # ALLOW, or a Reason
    rule: str = ""
    route: Route | None = field(default=None, compare=True)
    detail: str = ""  # what a refusal names: a model, scopes, a size
    # The body's model, when the policy read it (a key's model list, or a
    # token budget per model): the upstream gets the same bytes.
    model: str = ""


ALLOW: Final = "allowed"


def refuse(reason: Reason, rule: str = "", detail: str = "") -> Decision:
    return Decision(False, reason.status, reason, rule, None, detail)


NO_ROUTE: Final = refuse(Reason.ROUTE_NOT_ALLOWED)
UNSAFE_PATH: Final = refuse(Reason.PATH_NOT_NORMALIZED)
AMBIGUOUS_HOST: Final = refuse(Reason.AMBIGUOUS_HOST)
# A Host header both HAProxy (haproxy.cfg's txn.host, which picks the
# backend) and the policy read the same way: a name without trailing dot or
# empty label, or an IPv6 literal, then maybe a port; haproxy.cfg refuses
# the others with the same expression.
_CANONICAL_HOST: Final = re.compile(
    r"([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
    r"(:[0-9]{1,5})?")


def normalize_host(host: str) -> str:
    """The Host header as haproxy.cfg's txn.host gives it (`host_only,lower`):
    lower case, no port. A final dot stays, so that such a name matches no
    rule of the name without it (and is refused as ambiguous)."""
    host = host.lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def _stems(path: str) -> list[str]:
    """The path's leading parts that end with "/", longest first:
    /v1/models/x -> /v1/models/, /v1/, /."""
    return [path[: i + 1] for i in range(len(path) - 1, -1, -1) if path[i] == "/"]


class _Templates:
    """Templates sharing one literal stem (`/v1/models/` for
    `/v1/models/{model}`), compiled into one alternation."""

    def __init__(self, by_path: dict[str, list[Route]]) -> None:
        self.routes = list(by_path.values())
        self.regex = re.compile("|".join(
            f"(?P<t{i}>{_template_regex(path)})" for i, path in enumerate(by_path)))

    def match(self, path: str) -> list[Route]:
        found = self.regex.fullmatch(path)
        if found is None or found.lastgroup is None:
            return []
        return self.routes[int(found.lastgroup[1:])]


class _PathTable:
    """The routes of one host. A request costs dict lookups per "/" of its
    path, however many rules there are: exact paths, then templates by their
    literal stem, then prefixes (which end with "/"), longest first."""

    def __init__(self, routes: list[Route]) -> None:
        self.exact: dict[str, list[Route]] = {}
        by_stem: dict[str, dict[str, list[Route]]] = {}
        self.prefixes: dict[str, list[Route]] = {}
        for route in routes:
            if route.prefix:
                self.prefixes.setdefault(route.path, []).append(route)
            elif route.is_template:
                literal = route.path.partition("{")[0]
                stem = literal[: literal.rfind("/") + 1]
                by_stem.setdefault(stem, {}).setdefault(route.path, []).append(route)
            else:
                self.exact.setdefault(route.path, []).append(route)
        self.templates = {stem: _Templates(paths) for stem, paths in by_stem.items()}

    def candidates(self, path: str) -> list[Route]:
        found = self.exact.get(path)
        if found:
            return found
        stems = _stems(path)
        if self.templates:
            for stem in stems:
                group = self.templates.get(stem)
                if group is not None and (routes := group.match(path)):
                    return routes
        for stem in stems:
            routes = self.prefixes.get(stem, [])
            if routes:
                return routes
        return []


class RouteTable:
    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        generic = [route for route in routes if not route.host]
        named: dict[str, list[Route]] = {}
        for route in routes:
            if route.host:
                named.setdefault(route.host, []).append(route)
        # A host's own rules decide first (even a prefix over another rule's
        # exact path); the rules for any host only where its own match nothing.
        self._hosts = {host: _PathTable(own) for host, own in named.items()
                       if not host.startswith("*.")}
        self._wildcards = sorted(
            ((host[1:], _PathTable(own)) for host, own in named.items()
             if host.startswith("*.")), key=lambda item: -len(item[0]))
        self._any = _PathTable(generic)
        # One Decision object per route: callers may cache on it cheaply.
        self._allowed = {route: Decision(True, 200, ALLOW, route.label, route)
                         for route in routes}
        # The decisions made so far, by (method, path, host) exactly as given:
        # clients repeat the same few requests, and a decision is a pure
        # function of those and this table. Bounded: the client picks them.
        self._decided: dict[tuple[str, str, str], Decision] = {}

    def _own_table(self, host: str) -> _PathTable | None:
        if not self._hosts and not self._wildcards:
            return None
        host = normalize_host(host)
        table = self._hosts.get(host)
        if table is not None:
            return table
        for suffix, wildcard in self._wildcards:
            if host.endswith(suffix):
                return wildcard
        return None

    def decide(self, method: str, path: str, host: str = "") -> Decision:
        key = (method, path, host)
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decide(method, path, host)
            if len(path) + len(host) <= CACHED_REQUEST_SIZE:
                if len(self._decided) >= DECISION_CACHE_SIZE:
                    self._decided.clear()
                self._decided[key] = decision
        return decision

    def _decide(self, method: str, path: str, host: str) -> Decision:
        if host and not _CANONICAL_HOST.fullmatch(host.lower()):
            return AMBIGUOUS_HOST
        own = self._own_table(host)
        candidates = (own.candidates(path) if own is not None else []) \
            or self._any.candidates(path)
        if not candidates:
            return NO_ROUTE
        for route in candidates:
            if method in route.methods:
                if route.prefix and _UNSAFE.search(path):
                    return UNSAFE_PATH
                return self._allowed[route]
        return refuse(Reason.METHOD_NOT_ALLOWED, candidates[0].label)

    def shadowed(self) -> list[tuple[Route, Route]]:
        """(earlier, later) pairs where the later rule can never decide."""
        seen: dict[tuple[str, str, bool, str], Route] = {}
        pairs = []
        for route in self.routes:
            for method in sorted(route.methods):
                key = (route.host, route.path, route.prefix, method)
                if key in seen:
                    pairs.append((seen[key], route))
                    break
                seen[key] = route
        return pairs


def _template_regex(path: str) -> str:
    out = []
    pos = 0
    for match in _PARAM.finditer(path):
        out.append(re.escape(path[pos : match.start()]))
        out.append(_SEGMENT)
        pos = match.end()
    out.append(re.escape(path[pos:]))
    return "".join(out)
