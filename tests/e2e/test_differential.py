"""Differential: generated hosts, paths, methods, credentials and bodies sent
through real HAProxy; for each, whether the upstream received it must agree
with what `spoa-agent check` (its `explain`, in process) says about the same
request. Any disagreement is a request one reader lets through and another
would have refused."""

from __future__ import annotations

import http.client
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoa_agent.app import explain
from spoa_agent.config import Config, load_config
from spoa_agent.demo.stack import Gateway
from spoa_agent.outcome import MODEL_LISTS
from tests.conftest import EXAMPLE_CONFIG, OWN_LOGIN_ROUTE, haproxy_params
from tests.e2e.test_gate_integrity import SMALL_BODY_ROUTE

# Each kind of caller from its own address: a flood of 401s from one must not
# get the others shed by HAProxy's per-address failure count.
SOURCES = {"none": "127.0.0.5", "key": "127.0.0.6", "one-model": "127.0.0.7"}


@dataclass
class Differential:
    gw: Gateway
    config: Config
    tokens: dict[str, str | None]
    probes: Iterator[int]

    def reached(self, probe: str) -> bool:
        return any(name.lower() == "x-probe" and value == probe
                   for upstream in ("upstream", "openwebui")
                   for record in self.gw.upstream_requests(upstream)
                   for name, value in record["headers"])


@pytest.fixture(scope="module", params=haproxy_params())
def differential(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Differential]:
    if request.param is None:
        pytest.fail(f"{request.node.name}: HAProxy binary not installed (run `make test`)")
    workdir = tmp_path_factory.mktemp("differential")
    gw = Gateway(workdir)
    text = (EXAMPLE_CONFIG.read_text() + OWN_LOGIN_ROUTE + SMALL_BODY_ROUTE)
    # Limits stay out of the way: this compares readings, not rates.
    text = text.replace('per_key = "120/m"', 'per_key = "1000000/m"').replace(
        'per_ip = "600/m"', 'per_ip = "1000000/m"').replace(
        'url = "redis://127.0.0.1:6379/0"', f'url = "{gw.redis_url}"')
    config_path = workdir / "agent.toml"
    config_path.write_text(text)
    try:
        gw.start_redis()
        gw.start_upstream()
        gw.start_openwebui()
        gw.start_agent(config_path)
        gw.start_haproxy(str(request.param))
        tokens: dict[str, str | None] = {"none": None}
        for name, extra in (("key", ()), ("one-model", ("--model", "llama3.2:1b"))):
            created = gw.spoa_agent("token", "create", "--name", name, "--format", "json",
                                    *extra)
            assert created.returncode == 0, created.stderr
            tokens[name] = json.loads(created.stdout)["token"]
        yield Differential(gw, load_config(config_path), tokens, itertools.count())
    finally:
        gw.stop()


HOSTS = st.one_of(
    st.sampled_from(["chat.example.com", "ollama.example.com", "gw.example.com", "localhost",
                     "127.0.0.1", "[::1]", ""]),
    st.builds(str.__add__,
              st.sampled_from(["chat.example.com", "CHAT.Example.com", "ollama.example.com",
                               "chat", ".chat.example.com", "chat..example.com"]),
              st.sampled_from(["", ".", "..", ":8080", ".:8080", ":", ":80.", ":x", " ", "%2e",
                               "_", "-"])),
)
PATHS = st.builds(
    str.__add__,
    st.sampled_from(["/api/pull", "/api/tags", "/api/chat", "/v1/models/llama3.2:1b",
                     "/v1/chat/completions", "/small", "/", "/api/version"]),
    st.sampled_from(["", "/", "?x=1", "/..", "/../api/pull", "%2f", "//", "/.", "#x"]),
) | st.sampled_from(["//api/pull", "/API/PULL", "/api/%70ull", "/v1/../api/pull",
                     "/./api/pull", "/api/pull;x", "/api\\pull"])
# Less than HAProxy's buffer (tune.bufsize 16384, less its reserve): what the
# agent is sent of a body at most.
HAPROXY_BODY_SEEN = 15000
BODIES = st.sampled_from([
    None, b"{}", b'{"model":"llama3.2:1b"}', b'{"model":"qwen2.5:72b"}',
    b'{"model":"llama3.2:1b","model":"qwen2.5:72b"}', b'{"model":"llama3.2:1b","Model":"x"}',
    b'{"MODEL":"llama3.2:1b"}', b'{"model":"llama3.2:1b","mod\\u0065l":"x"}', b"not json",
    b"x" * 2000, b'{"model":"llama3.2:1b","pad":"' + b"x" * 20000 + b'"}',
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host=HOSTS, path=PATHS, method=st.sampled_from(["GET", "POST", "DELETE"]),
       who=st.sampled_from(sorted(SOURCES)), body=BODIES)
def test_the_upstream_gets_exactly_what_check_allows(
        differential: Differential, host: str, path: str, method: str, who: str,
        body: bytes | None) -> None:
    probe = str(next(differential.probes))
    token = differential.tokens[who]
    headers = {"Host": host, "X-Probe": probe}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", differential.gw.gateway_port, timeout=15,
                                      source_address=(SOURCES[who], 0))
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        status, answer = response.status, response.read()
    finally:
        conn.close()
    reached = differential.reached(probe)
    if host == "":
        # An empty Host header is one HAProxy refuses (400 ambiguous_host,
        # tests/e2e/test_gate_integrity.py); `check` reads "" as no Host.
        assert (status, reached) == (400, False)
        return
    if status == 400 and answer.startswith(b"<html>"):
        # HAProxy's own HTTP parser refused it (a '#' in the target, say):
        # not a policy question, and nothing reached an upstream.
        assert not reached
        return
    if status == 413 and len(body or b"") > HAPROXY_BODY_SEEN and b"body_too_large" in answer:
        # The agent sees at most HAProxy's buffer of a body (tune.bufsize, 16 KB):
        # one whose model the key's model list needs but that runs past it
        # cannot be checked and is refused (body_too_large_for_model_check),
        # where `check` reads the whole body. Refused, nothing reached.
        assert not reached
        return
    # HAProxy's `path` stops at the query string; http.client sends
    # Content-Length: 0 for a POST without a body.
    if body is None and method == "POST":
        body = b""
    # "": a request without a credential (explain's None is "any valid key").
    verdict = explain(differential.config, method, path.split("?")[0], host, SOURCES[who],
                      "" if token is None else token, body)
    if verdict.allowed and method == "GET" and token == differential.tokens["one-model"] \
            and path.split("?")[0] in MODEL_LISTS:
        # A key limited to some models gets its list from the gateway itself
        # (lua/spoa_deny.lua's spoa-models): allowed, and no upstream asked.
        assert (status, reached) == (200, False) and b"llama3.2:1b" in answer, answer
        return
    assert reached == verdict.allowed, (status, verdict)
