"""The per-request path compiled to C (mypyc, by setup.py): which modules,
and whether this install runs them compiled.

SPOA_AGENT_PURE_PYTHON=1 in the environment runs them from their Python
sources even where they are compiled (spoa_agent/__init__.py calls
prefer_sources()): the same answers, more CPU per request; for telling a
fault of the compiler from one of the code, and for testing both.

setup.py reads HOT_PATH from this file without importing the package, so it
imports nothing of spoa_agent.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence

# Every module a check-request passes through, from the bytes HAProxy sends
# to the bytes of the ACK. Not reasons.py: mypyc cannot compile an Enum with
# its own __new__ (and reading a member costs next to nothing).
HOT_PATH = (
    "spoa_agent.record",
    "spoa_agent.spop.data",
    "spoa_agent.spop.frames",
    "spoa_agent.spop.connection",
    "spoa_agent.server.agent",
    "spoa_agent.server.protocol",
    "spoa_agent.request",
    "spoa_agent.policy.routes",
    "spoa_agent.policy.access",
    "spoa_agent.auth.authenticator",
    "spoa_agent.cache",
    "spoa_agent.ratelimit.limits",
    "spoa_agent.ratelimit.plan",
    "spoa_agent.ratelimit.limiter",
    "spoa_agent.outcome",
    "spoa_agent.app",
)
SOURCES = tuple(name.replace(".", "/") + ".py" for name in HOT_PATH)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of HOT_PATH as Python sources, never compiled."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_PATH or not path:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def prefer_sources() -> None:
    """Import the modules of HOT_PATH from their .py files from now on."""
    if not any(type(finder) is _SourceFinder for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def _origin(name: str) -> str:
    spec = importlib.util.find_spec(name)
    return spec.origin or "" if spec is not None else ""


def pure_modules() -> list[str]:
    """The modules of HOT_PATH this install runs as Python, not compiled."""
    return [name for name in HOT_PATH if not _origin(name).endswith(".so")]


def stale_modules() -> list[str]:
    """Compiled modules older than their source beside them: a checkout
    edited since it was last built, whose edits Python would not run (it
    prefers the compiled module). Empty for an installed package, whose
    files all date from the install, in whatever order pip wrote them."""
    package = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(os.path.dirname(package), "setup.py")):
        return []  # not a source checkout
    if os.environ.get("SPOA_AGENT_PURE_PYTHON"):
        return []  # the sources run, whatever is compiled beside them
    stale = []
    for name in HOT_PATH:
        compiled = _origin(name)
        source = compiled.rsplit("/", 1)[0] + "/" + name.rsplit(".", 1)[1] + ".py"
        if compiled.endswith(".so") and os.path.exists(source) \
                and os.path.getmtime(source) > os.path.getmtime(compiled):
            stale.append(name)
    return stale
