"""Fixtures that start real components on free ports and stop them."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent import native
from spoa_agent.demo import stack
from spoa_agent.demo.stack import Gateway, Process, haproxy_binaries
from spoa_agent.install.shipped import EXAMPLE_CONFIG as EXAMPLE_CONFIG_SHIPPED
from tests.peer import Peer

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = EXAMPLE_CONFIG_SHIPPED

# The tests check what the gateway decides, not how fast: on a loaded CI
# machine (seen: Python taking over 10 s to start) the shipped deadlines, a
# 250 ms Redis timeout and a 1 s decision, turn slowness into 503s. So the
# gateways under test run the shipped example with loose deadlines, and
# HAProxy waits longer for a decision (haproxy.cfg's SPOE_PROCESSING_TIMEOUT).
# Tests of the deadlines themselves set their own.
LOOSE_DEADLINES = {'handler_timeout = "900ms"': 'handler_timeout = "4500ms"',
                   'timeout = "250ms"': 'timeout = "2s"'}  # Redis, and the limiter's
os.environ["SPOE_PROCESSING_TIMEOUT"] = "5s"


def _example_config_for_tests() -> Path:
    text = SHIPPED_CONFIG.read_text()
    for shipped, loose in LOOSE_DEADLINES.items():
        assert shipped in text, f"{SHIPPED_CONFIG} no longer has {shipped}"
        text = text.replace(shipped, loose)
    folder = tempfile.mkdtemp(prefix="spoa-agent-tests-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "agent.example.toml"
    path.write_text(text)
    return path


EXAMPLE_CONFIG = _example_config_for_tests()
# A host whose upstream does its own login (OpenWebUI), to add to a config.
OWN_LOGIN_ROUTE = """
[[routes]]
name = "openwebui"
host = "chat.example.com"
prefix = "/"
methods = ["GET", "POST"]
auth = "none"
"""


@pytest.fixture(scope="session")
def policy_only_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example policy with API keys and rate limits off: for protocol tests."""
    return stack.policy_only_config(EXAMPLE_CONFIG,
                              tmp_path_factory.mktemp("config") / "policy-only.toml")

HAPROXY = haproxy_binaries()


def pytest_configure(config: pytest.Config) -> None:
    # The tests run the per-request path as it is built (compiled, setup.py):
    # a compiled module older than its edited source would test old code.
    stale = native.stale_modules()
    if stale:
        raise pytest.UsageError(f"compiled modules older than their source: {', '.join(stale)};"
                                " build again with `make deps` (or pip install -e .)")
    # The suite opens over a thousand sockets at once (idle-connection test).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(autouse=True)
def close_peers() -> Iterator[None]:
    yield
    while Peer.opened:
        Peer.opened.pop().close()


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def agent(tmp_path: Path, policy_only_config: Path) -> Iterator[tuple[Gateway, Process]]:
    """A real `spoa-agent serve` process with the example policy, keys off."""
    gw = Gateway(tmp_path)
    try:
        proc = gw.start_agent(policy_only_config)
        yield gw, proc
    finally:
        gw.stop()


@pytest.fixture
def redis_gw(tmp_path: Path) -> Iterator[Gateway]:
    """A Gateway with only its own Redis running (start the rest as needed)."""
    gw = Gateway(tmp_path)
    try:
        gw.start_redis()
        yield gw
    finally:
        gw.stop()


def haproxy_params() -> list[object]:
    """Both HAProxy versions the agent must work with; missing ones fail loudly."""
    return [pytest.param(HAPROXY.get(v), id=f"haproxy-{v}") for v in ("2.6", "2.8")]
