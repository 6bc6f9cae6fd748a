"""docs/configuration.md documents exactly the settings the loader accepts,
and every SPOA_AGENT_* variable the loader reads.

The loader has no single list of known keys: each table's reader passes the
names it accepts to `_Reader.unknown()`. So the test loads a file that has
every table, array of tables and table-form value, records what each of
those calls accepts, and checks that every `unknown()` call in config.py ran
(a new table the file below does not reach fails here, not silently).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from spoa_agent import config as loader

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# Every table the loader reads, empty: values need not be valid, only present,
# so that each table's check of its names runs. `[{}]` reaches an array of
# tables ([[routes]]) or a table entry of a list (presets); `{}` under
# [ratelimit] reaches the table form of a limit.
EVERY_TABLE: dict[str, Any] = {
    "server": {}, "log": {}, "redis": {}, "metrics": {},
    "auth": {"argon2": {}},
    "jwt": {"issuers": [{}]},
    "ratelimit": {"per_key": {}, "per_ip": {}, "global": {}},
    "presets": [{}],
    "routes": [{}],
    "oidc": {},
}

# A row of a settings table: its first cell is the dotted name in backticks.
ROW = re.compile(r"^\|\s*`([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)`\s*\|", re.M)


def _unknown_call_lines() -> set[int]:
    """Lines of config.py that call `<reader>.unknown(...)`."""
    tree = ast.parse(Path(inspect.getfile(loader)).read_text())
    return {node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "unknown"}


def _accepted(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """(every dotted name the loader accepts, the names among them that are
    tables). `routes[0]` and `jwt.issuers[0]` are named `routes`, `jwt.issuers`."""
    seen: list[tuple[str, frozenset[str], int]] = []
    original = loader._Reader.unknown

    def spy(self: Any, data: Mapping[str, Any], known: set[str], where: str) -> None:
        caller = sys._getframe(1)
        seen.append((re.sub(r"\[\d+\]", "", where), frozenset(known), caller.f_lineno))
        original(self, data, known, where)

    monkeypatch.setattr(loader._Reader, "unknown", spy)
    # Empty tables are not a valid config; only the names matter.
    with contextlib.suppress(loader.ConfigError):
        loader.parse_config(EVERY_TABLE, "every-table.toml")
    missed = _unknown_call_lines() - {line for _, _, line in seen}
    assert not missed, (
        f"config.py checks names at line(s) {sorted(missed)}, which EVERY_TABLE in this "
        "test does not reach: add the table there, then document its settings")
    names = {f"{where}.{key}" if where else key for where, known, _ in seen for key in known}
    tables = {where for where, _, _ in seen if where}
    return names, tables


def _documented() -> list[str]:
    return ROW.findall(DOC.read_text())


def test_the_doc_documents_exactly_the_settings_the_loader_accepts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    names, tables = _accepted(monkeypatch)
    documented = _documented()
    twice = sorted({name for name in documented if documented.count(name) > 1})
    assert not twice, f"documented more than once in {DOC.name}: {twice}"
    # Tables need no row of their own; one that also takes a plain value
    # (presets, routes, ratelimit.per_ip = "600/m") may have one.
    undocumented = sorted(names - tables - set(documented))
    assert not undocumented, f"settings the loader accepts, missing from {DOC.name}: " \
        f"{undocumented}"
    unknown = sorted(set(documented) - names)
    assert not unknown, f"settings in {DOC.name} that the loader does not accept: {unknown}"


def test_the_doc_names_every_environment_variable_the_loader_reads() -> None:
    source = Path(inspect.getfile(loader)).read_text()
    variables = set(re.findall(r"\bSPOA_AGENT_[A-Z0-9_]+\b", source))
    variables |= {value for name, value in vars(loader).items()
                  if name.startswith("ENV_") and isinstance(value, str)}
    assert variables, "config.py reads no SPOA_AGENT_* variable? the test lost track of it"
    text = DOC.read_text()
    missing = sorted(v for v in variables if f"`{v}`" not in text)
    assert not missing, f"environment variables missing from {DOC.name}: {missing}"


def test_the_row_pattern_reads_the_doc() -> None:
    # Guards the test itself: a change of table format must not make every
    # row invisible (and the first test then only report everything missing).
    assert len(_documented()) > 40
