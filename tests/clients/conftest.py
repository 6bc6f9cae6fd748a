"""One running gateway per HAProxy version (Redis, agent with the example
policy, the demo upstream, the shipped haproxy.cfg) shared by a module's
SDK tests, and the API keys they use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent.auth.keys import format_key, new_secret, parse_key
from spoa_agent.demo.stack import Gateway, gateway
from tests.conftest import EXAMPLE_CONFIG, haproxy_params
from tests.e2e.conftest import create_key

MODEL = "llama3.2:1b"


def running_gateway(request: pytest.FixtureRequest, workdir: Path, config: Path,
                    workers: int = 1) -> Iterator[Gateway]:
    """The whole gateway on the HAProxy version the fixture is parametrized with."""
    if request.param is None:
        pytest.fail(f"{request.node.name}: HAProxy binary not installed (run `make test`)")
    with gateway(workdir, str(request.param), config, workers) as running:
        yield running


@pytest.fixture(scope="module", params=haproxy_params())
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Gateway]:
    yield from running_gateway(request, tmp_path_factory.mktemp("clients"), EXAMPLE_CONFIG)


def _create(gw: Gateway, *args: str) -> str:
    return str(create_key(gw, *args)["token"])


@pytest.fixture(scope="module")
def key(gw: Gateway) -> str:
    return _create(gw, "--name", "sdk-client")


@pytest.fixture(scope="module")
def wrong_key(key: str) -> str:
    """Well formed, right id, wrong secret: the agent must check the hash."""
    return format_key("spoa", parse_key(key, "spoa").key_id, new_secret())


@pytest.fixture
def limited_key(gw: Gateway) -> str:
    """A fresh key allowed one request a minute: the second is a 429."""
    return _create(gw, "--name", "sdk-limited", "--rate", "1/m")


@pytest.fixture(scope="module")
def one_model_key(gw: Gateway) -> str:
    return _create(gw, "--name", "sdk-one-model", "--model", MODEL)
