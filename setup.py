"""Compiles the agent's per-request path to C with mypyc; everything else in
pyproject.toml.

Measured (bench/README.md): the agent's own CPU per request is mostly the
Python interpreter running these modules, one request at a time; compiled,
the same code costs about half as much CPU and the gateway's req/s follows.
mypyc compiles the typed code as it is (the modules spoa_agent/native.py
lists are plain, mypy-strict Python and stay the source), so there is one
implementation, not a Python one beside a C one. It needs a C compiler and
Python's headers at install time; without them (or with
SPOA_AGENT_PURE_PYTHON=1) the package installs as pure Python and runs the
same, only slower:
`spoa-agent doctor` says which one a host runs.
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import Extension, setup

# The modules to compile (spoa_agent/native.py, read without importing the
# package, which needs its dependencies).
SOURCES = runpy.run_path("spoa_agent/native.py")["SOURCES"]
# mypyc type-checks what it compiles, against what is installed: in a fresh
# venv pip builds this package before its dependencies are there, so their
# types are unknown (Any) to the build. `make lint` holds the code to mypy
# --strict with them installed; the build only has to compile.
BUILD_CHECK = ["--ignore-missing-imports", "--no-warn-return-any", "--no-warn-unused-ignores"]


def compiled_modules() -> list[Extension]:
    if os.environ.get("SPOA_AGENT_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # build isolation off, without mypy: pure Python
        print("setup.py: mypyc not found; installing the agent as pure Python",
              file=sys.stderr)
        return []
    # One shared library for the group, named for the package (not a hash).
    modules = mypycify([*BUILD_CHECK, *SOURCES], opt_level="3", group_name="spoa_agent_native")
    for module in modules:
        module.optional = True  # no C compiler or headers: a warning, then pure Python
    return modules


setup(ext_modules=compiled_modules())
