"""The running gateway (Redis, upstream, agent, HAProxy) for each HAProxy version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, gateway
from tests.conftest import EXAMPLE_CONFIG, haproxy_params


@pytest.fixture(params=haproxy_params())
def haproxy(request: pytest.FixtureRequest) -> str:
    if request.param is None:
        pytest.fail(f"{request.node.callspec.id}: binary not installed (run `make test`)")
    return str(request.param)


@pytest.fixture
def gw(haproxy: str, tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, haproxy, EXAMPLE_CONFIG) as running:
        yield running


def create_key(gw: Gateway, *args: str) -> dict[str, object]:
    result = gw.spoa_agent("token", "create", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    created: dict[str, object] = json.loads(result.stdout)
    return created


@pytest.fixture
def key(gw: Gateway) -> str:
    """A valid API key's secret."""
    return str(create_key(gw, "--name", "e2e-client")["token"])
