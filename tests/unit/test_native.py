"""The per-request path as it is built (setup.py, spoa_agent/native.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent import native
from spoa_agent.install import doctor

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(bool(os.environ.get("SPOA_AGENT_PURE_PYTHON")),
                    reason="built as pure Python on purpose")
def test_every_module_of_the_hot_path_runs_compiled() -> None:
    # `make deps` compiles them; a module missing here runs as Python, slower.
    assert native.pure_modules() == []
    assert doctor.compiled_check().ok


def test_the_modules_compiled_are_the_sources_in_the_tree() -> None:
    for source in native.SOURCES:
        assert (REPO / source).is_file(), source


@pytest.fixture
def edited_app() -> Iterator[Path]:
    """app.py as if edited after the build; its times put back after."""
    source = REPO / "spoa_agent" / "app.py"
    before = source.stat()
    os.utime(source, (before.st_atime, before.st_mtime + 3600))
    try:
        yield source
    finally:
        os.utime(source, (before.st_atime, before.st_mtime))


@pytest.mark.skipif(not native.HOT_PATH or "spoa_agent.app" in native.pure_modules(),
                    reason="app.py runs as Python: nothing compiled to go stale")
def test_an_edited_source_is_named_stale_by_doctor(edited_app: Path) -> None:
    assert native.stale_modules() == ["spoa_agent.app"]
    check = doctor.compiled_check()
    assert not check.ok
    assert "spoa_agent.app" in check.detail
    assert "pip install -e ." in check.fix


def test_doctor_says_when_the_path_runs_as_pure_python(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "pure_modules", lambda: list(native.HOT_PATH))
    monkeypatch.setattr(native, "stale_modules", lambda: [])
    check = doctor.compiled_check()
    assert not check.ok
    assert f"{len(native.HOT_PATH)} of {len(native.HOT_PATH)} modules" in check.detail
    assert "python3-dev" in check.fix
