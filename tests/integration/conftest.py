"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoa_agent.demo.stack import Gateway, free_port
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer


@pytest.fixture
def two_agents(redis_gw: Gateway) -> Iterator[tuple[Gateway, Peer, Peer]]:
    """Two agent processes on one Redis, each with a peer speaking SPOP as HAProxy."""
    second = free_port()
    redis_gw.start_agent(EXAMPLE_CONFIG)
    redis_gw.start_agent(EXAMPLE_CONFIG, port=second, name="agent-b")
    a, b = Peer(redis_gw.agent_port), Peer(second)
    a.hello()
    b.hello()
    yield redis_gw, a, b
