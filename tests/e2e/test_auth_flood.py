"""Floods of bad credentials through real HAProxy (issue 12, item 7): an
address that keeps failing is refused by HAProxy itself, before the agent,
and valid clients elsewhere, even with a key not checked yet, still get in."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from spoa_agent.auth.keys import format_key, new_key_id, new_secret
from spoa_agent.demo.stack import Gateway
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key

FLOODER, CLIENT, NEWCOMER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LIMIT = 20  # haproxy.cfg's AUTH_FAILURE_LIMIT default


def agent_lines_from(gw: Gateway, address: str) -> int:
    return sum(1 for line in gw.processes["agent"].log().splitlines()
               if json.loads(line).get("source.ip") == address)


def wrong_key() -> str:
    return format_key("spoa", new_key_id(), new_secret())


def test_address_failing_too_often_is_refused_before_the_agent(gw: Gateway, key: str) -> None:
    statuses = []
    for _ in range(LIMIT + 5):
        status, headers, body = request(gw, "GET", "/api/tags", bearer(wrong_key()),
                                        source=FLOODER)
        statuses.append(status)
    assert statuses[:LIMIT - 2] == [401] * (LIMIT - 2)  # slack: a counter period may turn
    assert statuses[-3:] == [429] * 3, statuses
    assert headers["retry-after"] == "10"
    assert "invalid API key" in error_message(body)
    time.sleep(0.2)
    seen = agent_lines_from(gw, FLOODER)
    assert seen >= LIMIT - 2
    # Each API dialect gets its own body, as from the Lua service.
    for path, headers in (("/v1/messages", {}), ("/v1/models", {"anthropic-version": "1"}),
                          ("/api/tags", {}), ("/v1/models", {})):
        status, headers, body = request(gw, "GET", path, headers, source=FLOODER)
        error = json.loads(body)["error"]
        assert status == 429 and headers["cache-control"] == "no-store"
        assert isinstance(error, str) if path.startswith("/api/") else "message" in error
    # Refused by HAProxy, even with a valid key: the agent hears nothing more.
    assert request(gw, "GET", "/api/tags", bearer(key), source=FLOODER)[0] == 429
    assert request(gw, "GET", "/api/tags", bearer(wrong_key()), source=FLOODER)[0] == 429
    time.sleep(0.2)
    assert agent_lines_from(gw, FLOODER) == seen
    # Other addresses are not concerned.
    assert request(gw, "GET", "/api/tags", bearer(key), source=CLIENT)[0] == 200
    assert request(gw, "GET", "/api/tags", bearer(wrong_key()), source=CLIENT)[0] == 401


async def _wave(port: int, source: str, size: int) -> collections.Counter[int]:
    """`size` requests with made-up keys sent at once, each on its own connection."""

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        writer.write(f"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                     f"{format_key('spoa', new_key_id(), new_secret())}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        writer.close()
        await writer.wait_closed()
        return status

    return collections.Counter(await asyncio.gather(*(one() for _ in range(size))))


@contextmanager
def flood(gw: Gateway, source: str, size: int) -> Iterator[collections.Counter[int]]:
    """Waves of `size` concurrent bad credentials from `source` until the block ends."""
    seen: collections.Counter[int] = collections.Counter()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            seen.update(asyncio.run(_wave(gw.gateway_port, source, size)))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        time.sleep(0.3)  # under way
        yield seen
    finally:
        stop.set()
        thread.join()


def test_uncached_valid_keys_get_in_during_a_flood(gw: Gateway) -> None:
    keys = [str(create_key(gw, "--name", f"newcomer{i}")["token"]) for i in range(5)]
    with flood(gw, FLOODER, 300) as flooded:
        for key in keys:  # each one's first use: a Redis lookup and argon2id
            assert request(gw, "GET", "/api/tags", bearer(key), source=NEWCOMER)[0] == 200
            time.sleep(0.2)
    # The flood was answered: 401 for its first checks, 429 for the rest
    # (the agent's too_many_key_checks, then HAProxy's own).
    assert set(flooded) <= {401, 429}, flooded
    assert flooded[429] > flooded[401]
