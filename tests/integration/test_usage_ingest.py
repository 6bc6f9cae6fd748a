"""The agent's usage port, spoken to as HAProxy's Lua speaks it (`batch N ID`,
N JSON lines, then `ok N`), against a real agent and a real Redis: each
batch is counted once however often it is sent, a malformed record is
dropped without losing the rest, and `spoa-agent usage` shows the sums."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from spoa_agent.demo.stack import Gateway
from tests.conftest import EXAMPLE_CONFIG


def record(ident: str, key: str = "k1", model: str = "m1", used_in: int = 10,
           used_out: int = 5, status: int = 200) -> bytes:
    return json.dumps({"id": ident, "key": key, "name": f"name of {key}", "model": model,
                       "status": status, "in": used_in, "out": used_out, "bytes": 100,
                       "ms": 20, "ts": int(time.time())}).encode()


def send(port: int, lines: list[bytes], batch_id: str = "") -> str:
    """A batch as the Lua sends it; its id is its first record's, unless given."""
    batch_id = batch_id or str(json.loads(lines[0])["id"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"batch %d %s\n" % (len(lines), batch_id.encode()) + b"\n".join(lines)
                     + b"\n")
        return sock.makefile("rb").readline().decode().strip()


def usage(gw: Gateway, *args: str) -> list[dict[str, object]]:
    result = gw.spoa_agent("usage", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def agent_gw(redis_gw: Gateway) -> Iterator[Gateway]:
    redis_gw.start_agent(EXAMPLE_CONFIG)
    yield redis_gw


def test_each_batch_counts_once_however_often_it_is_sent(agent_gw: Gateway) -> None:
    batch = [record("a", used_in=10, used_out=5), record("b", used_in=7, used_out=1),
             record("c", key="k2", model="m2", used_in=100, used_out=50, status=500)]
    assert send(agent_gw.usage_port, batch) == "ok 3"
    # HAProxy lost our answer and sends the batch again, as it was.
    assert send(agent_gw.usage_port, batch) == "ok 3"
    # The next batch is counted.
    assert send(agent_gw.usage_port, [record("d", used_in=1, used_out=1)]) == "ok 1"
    rows = {row["key"]: row for row in usage(agent_gw)}
    assert rows["k1"] == {"key": "k1", "name": "name of k1", "requests": 3, "tokens_in": 18,
                          "tokens_out": 7, "tokens": 25, "errors": 0, "bytes": 300,
                          "avg_ms": 20}
    assert (rows["k2"]["requests"], rows["k2"]["tokens"], rows["k2"]["errors"]) == (1, 150, 1)
    by_model = {row["model"]: row["tokens"] for row in usage(agent_gw, "--by", "model")}
    assert by_model == {"m1": 25, "m2": 150}
    assert usage(agent_gw, "--key", "k2")[0]["tokens_in"] == 100


def test_a_malformed_record_is_dropped_and_the_rest_counted(agent_gw: Gateway) -> None:
    lines = [record("x1"), b"{not json", json.dumps({"id": "x2", "key": "k1", "in": -5}).encode(),
             record("x3", used_in=2, used_out=2)]
    assert send(agent_gw.usage_port, lines) == "ok 4"  # acknowledged: never to be resent
    assert usage(agent_gw)[0]["requests"] == 2
    assert "usage_record_malformed" in agent_gw.processes["agent"].log()


def test_a_stream_that_is_not_the_protocol_is_refused(agent_gw: Gateway) -> None:
    for wrong in (b"GET / HTTP/1.1\r\n\r\n", b"batch 1\n", b"batch 1 " + b"x" * 300 + b"\n"):
        with socket.create_connection(("127.0.0.1", agent_gw.usage_port), timeout=10) as sock:
            sock.sendall(wrong)
            assert sock.makefile("rb").readline().startswith(b"error")
    assert send(agent_gw.usage_port, [record("y")]) == "ok 1"  # the port still serves


def test_usage_says_when_there_is_none(agent_gw: Gateway) -> None:
    result = agent_gw.spoa_agent("usage")
    assert result.returncode == 0 and "no usage recorded" in result.stdout
    csv = agent_gw.spoa_agent("usage", "--format", "csv")
    assert csv.returncode == 0 and csv.stdout == ""
    bad = agent_gw.spoa_agent("usage", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
