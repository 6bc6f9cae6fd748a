"""Route allowlist: which (method, path) pairs a request may use. Pure, no I/O.

Default deny: a request no rule allows is refused. Exact paths are one dict
lookup; templates (`/v1/models/{model}`) are compiled once into one regex.
Paths are matched as HAProxy's `path` fetch gives them, byte for byte: an
encoded, doubled or dotted variant of an allowed path matches nothing and is
refused, so no spelling of a blocked endpoint can slip through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spoa_agent.ratelimit.limits import Rate

# One path segment of a template: what model names and ids use, and never a
# "." or ".." segment, "%" escapes or "/".
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._:@+-]*"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteError(ValueError):
    """A route that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    methods: frozenset[str]
    name: str = ""
    rate: Rate | None = None  # shared by every caller of this route

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
    reason: str
    rule: str = ""
    rate: Rate | None = None  # the matched route's own limit


ALLOW = "allowed"


class RouteTable:
    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._exact: dict[str, list[Route]] = {}
        by_template: dict[str, list[Route]] = {}
        for route in routes:
            table = by_template if route.is_template else self._exact
            table.setdefault(route.path, []).append(route)
        templates = list(by_template)
        self._templates = list(by_template.values())
        # One Decision object per route: callers may cache on it cheaply.
        self._allowed = {route: Decision(True, 200, ALLOW, route.label, route.rate)
                         for route in routes}
        # One alternation with a named group per template: one regex call
        # whatever the number of templates.
        self._template_re = (
            re.compile(
                "|".join(
                    f"(?P<t{i}>{_template_regex(path)})" for i, path in enumerate(templates)
                )
            )
            if templates
            else None
        )

    def _candidates(self, path: str) -> list[Route]:
        found = self._exact.get(path)
        if found:
            return found
        if self._template_re is not None:
            match = self._template_re.fullmatch(path)
            if match is not None and match.lastgroup is not None:
                return self._templates[int(match.lastgroup[1:])]
        return []

    def decide(self, method: str, path: str) -> Decision:
        candidates = self._candidates(path)
        if not candidates:
            return Decision(False, 403, "route_not_allowed")
        for route in candidates:
            if method in route.methods:
                return self._allowed[route]
        return Decision(False, 403, "method_not_allowed", candidates[0].label)


def _template_regex(path: str) -> str:
    out = []
    pos = 0
    for match in _PARAM.finditer(path):
        out.append(re.escape(path[pos : match.start()]))
        out.append(_SEGMENT)
        pos = match.end()
    out.append(re.escape(path[pos:]))
    return "".join(out)
