"""A real three-master Redis Cluster and a real Sentinel: keys and exact limits.

Limiter keys share one hash tag, so all limits of a request sit in one slot
and one script call stays atomic; key records spread over every slot."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from spoa_agent.demo.stack import Gateway
from spoa_agent.ratelimit.limiter import RateLimiter, limit_key
from spoa_agent.ratelimit.limits import Limit, parse_rate
from spoa_agent.store.redis import async_client, close, sync_client, warm_up
from tests.conftest import EXAMPLE_CONFIG
from tests.integration.test_agent_keys import PUSHED_WITHIN, answer
from tests.peer import Peer


@pytest.fixture(params=["cluster", "sentinel"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    try:
        if request.param == "cluster":
            gw.start_redis_cluster(3)
        else:
            gw.start_redis_sentinel()
        yield gw
    finally:
        gw.stop()


def test_limits_are_exact(deployment: Gateway) -> None:
    async def body() -> None:
        limiters = [RateLimiter(async_client(deployment.redis_url, 2.0),
                                structlog.wrap_logger(structlog.ReturnLogger()))
                    for _ in range(2)]
        try:
            for rl in limiters:
                assert await rl.load() and await warm_up(rl.client, 4)
            # Three limits per request; the 10/m one decides.
            limits = [Limit("key", limit_key("api_key", "k1"), parse_rate("10/m")),
                      Limit("ip", limit_key("ip", "127.0.0.1"), parse_rate("100/m")),
                      Limit("global", limit_key("global", "all"), parse_rate("1000/m"))]
            verdicts = await asyncio.gather(*(limiters[i % 2].check(limits)
                                              for i in range(200)))
            assert sum(v.admitted for v in verdicts) == 10
        finally:
            for rl in limiters:
                await close(rl.client)

    asyncio.run(body())


def test_keys_and_revocation(deployment: Gateway) -> None:
    created = [json.loads(deployment.spoa_agent("token", "create", "--name", f"n{i}",
                                                "--format", "json").stdout) for i in range(5)]
    listed = json.loads(deployment.spoa_agent("token", "list", "--format", "json").stdout)
    assert sorted(k["id"] for k in listed) == sorted(k["id"] for k in created)
    deployment.start_agent(EXAMPLE_CONFIG)
    peer = Peer(deployment.agent_port)
    peer.hello()
    for stream, key in enumerate(created):
        assert answer(peer, stream, key["token"])["decision"] == "allow"
    rotated = json.loads(deployment.spoa_agent("token", "rotate", created[0]["id"],
                                               "--format", "json").stdout)
    assert answer(peer, 10, rotated["token"])["decision"] == "allow"
    assert deployment.spoa_agent("token", "revoke", created[1]["id"]).returncode == 0
    deadline = time.monotonic() + PUSHED_WITHIN
    stream = 20
    while answer(peer, stream, created[1]["token"])["decision"] == "allow":
        assert time.monotonic() < deadline, "the revocation was not pushed"
        stream += 1
        time.sleep(0.02)
    client = sync_client(deployment.redis_url)
    try:
        assert client.ping()
    finally:
        client.close()
