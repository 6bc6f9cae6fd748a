"""The per-request path from its Python sources (SPOA_AGENT_PURE_PYTHON=1)
answers exactly as the compiled one: two real agents, one of each, asked
the same questions over SPOP, every variable of every answer compared."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from spoa_agent.demo.stack import Gateway, free_port
from spoa_agent.spop import Ack, SetVar
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer


def _key(gw: Gateway, name: str) -> str:
    made = gw.spoa_agent("token", "create", "--name", name, "--rate", "2/m", "--format", "json")
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["token"])


def _answers(peer: Peer, key: str) -> list[dict[str, object]]:
    """The variables of each answer to a fixed series of requests."""
    asks: list[dict[str, object]] = [
        {"path": "/api/tags", "authorization": f"Bearer {key}"},
        {"path": "/api/pull", "authorization": f"Bearer {key}"},  # blocked endpoint
        {"path": "/api/tags"},  # no credential
        {"path": "/api/tags", "authorization": "Bearer spoa_not-a-key"},
        {"path": "/v1/chat/completions", "method": "POST", "content_length": "31",
         "body": b'{"model":"llama3.2:1b","x":1}  ', "authorization": f"Bearer {key}"},
        {"path": "/api/tags", "authorization": f"Bearer {key}"},  # over its 2/m
    ]
    answers = []
    for stream, ask in enumerate(asks, start=1):
        peer.notify(stream, **{"method": "GET", "ip": IPv4Address("192.0.2.7"), **ask})
        ack = peer.read()
        assert isinstance(ack, Ack) and ack.stream_id == stream
        answers.append({a.name: a.value for a in ack.actions if isinstance(a, SetVar)})
    return answers


def test_pure_python_answers_exactly_as_compiled(redis_gw: Gateway) -> None:
    compiled = redis_gw.start_agent(EXAMPLE_CONFIG)
    pure_port = free_port()
    pure = redis_gw.start_agent(EXAMPLE_CONFIG, port=pure_port, name="pure",
                                env={"SPOA_AGENT_PURE_PYTHON": "1"})
    seen = {}
    for name, port in (("compiled", redis_gw.agent_port), ("pure", pure_port)):
        peer = Peer(port)
        peer.hello()
        seen[name] = _answers(peer, _key(redis_gw, name))
    for answers in seen.values():
        # The principal is the key's own name; everything else must agree.
        for answer in answers:
            answer.pop("principal", None)
            answer.pop("principal_id", None)
    assert seen["pure"] == seen["compiled"]
    assert [a["status"] for a in seen["pure"]] == [200, 403, 401, 401, 200, 429]
    assert '"compiled":true' in compiled.log()
    assert '"compiled":false' in pure.log()
