"""JWT issuers whose keys come from a real OpenID provider (npm oidc-provider):
found through discovery by a real agent process, a key rotated at the
provider picked up without a restart, and the last good keys kept while the
provider is down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from spoa_agent.config import load_config
from spoa_agent.demo.stack import Gateway
from spoa_agent.install.doctor import identity_providers_check
from spoa_agent.spop import Ack, SetVar
from tests.conftest import EXAMPLE_CONFIG
from tests.oidc import Provider, signing_key
from tests.peer import Peer

SECRET = "robot-secret-robot-secret-robot-secret"  # the test client's, not a real one
ROBOT = {"client_id": "robot", "client_secret": SECRET,
         "grant_types": ["client_credentials"], "redirect_uris": [], "response_types": []}


@pytest.fixture
def provider() -> Iterator[Provider]:
    idp = Provider(keys=[signing_key("k1")], clients=[ROBOT]).start()
    try:
        yield idp
    finally:
        idp.stop()


def issuer_config(tmp_path: Path, provider: Provider, *settings: str) -> Path:
    """The example config with the provider as a JWT issuer, and these settings."""
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + "\n".join([
        "[[jwt.issuers]]", f'issuer = "{provider.issuer}"', 'audience = "ai-gateway"',
        'algorithms = ["ES256"]', *settings, ""]))
    return config


def sign_with(key: dict[str, Any], issuer: str, sub: str = "robot") -> str:
    """A token as the provider would sign it, with its key (the provider down)."""
    private = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(key))
    return jwt.encode({"iss": issuer, "aud": "ai-gateway", "sub": sub,
                       "exp": int(time.time()) + 300}, private, algorithm="ES256",
                      headers={"kid": key["kid"]})


def answer(peer: Peer, stream: int, token: str) -> dict[str, object]:
    peer.notify(stream, method="GET", path="/api/tags", authorization=f"Bearer {token}")
    ack = peer.read()
    assert isinstance(ack, Ack)
    return {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}


def test_keys_from_discovery_follow_rotation_and_outlive_the_provider(
        redis_gw: Gateway, provider: Provider, tmp_path: Path) -> None:
    config = issuer_config(tmp_path, provider, "discovery = true", "jwks_min_refresh = 1")
    agent = redis_gw.start_agent(config)
    peer = Peer(redis_gw.agent_port)
    peer.hello()

    first = answer(peer, 1, provider.client_credentials_token("robot", SECRET))
    assert (first["decision"], first["principal"]) == ("allow", "robot")

    # The provider rotates: a new key signs, the old one is still published.
    old = provider.keys[0]
    new = signing_key("k2")
    provider.stop()
    provider.keys = [new, old]
    provider.start()
    time.sleep(1.1)  # past jwks_min_refresh since the first fetch
    rotated = provider.client_credentials_token("robot", SECRET)
    assert jwt.get_unverified_header(rotated)["kid"] == "k2"
    second = answer(peer, 3, rotated)
    assert (second["decision"], second["principal"]) == ("allow", "robot")

    # The provider is down: tokens signed with either key fetched still pass,
    # a key never fetched is the gateway's trouble (503), not the client's.
    provider.stop()
    time.sleep(1.1)
    for stream, key in ((5, new), (7, old)):
        kept = answer(peer, stream, sign_with(key, provider.issuer, sub=f"s{stream}"))
        assert (kept["decision"], kept["principal"]) == ("allow", f"s{stream}")
    unknown = answer(peer, 9, sign_with(signing_key("k3"), provider.issuer))
    assert (unknown["status"], unknown["reason"]) == (503, "jwks_unavailable")
    log = agent.log()
    assert '"jwks_fetch_failed"' in log and SECRET not in log


def test_a_made_up_kid_within_the_refresh_bound_is_refused_without_a_fetch(
        redis_gw: Gateway, provider: Provider, tmp_path: Path) -> None:
    config = issuer_config(tmp_path, provider, f'jwks_url = "{provider.issuer}/jwks"',
                           "jwks_min_refresh = 60")
    redis_gw.start_agent(config)
    peer = Peer(redis_gw.agent_port)
    peer.hello()
    good = answer(peer, 1, provider.client_credentials_token("robot", SECRET))
    assert good["decision"] == "allow"
    # Forged kids within jwks_min_refresh of the last fetch: the client's doing.
    for stream in range(3, 13, 2):
        forged = answer(peer, stream, sign_with(signing_key(f"evil{stream}"), provider.issuer))
        assert (forged["status"], forged["reason"]) == (401, "unknown_kid")


def test_doctor_checks_each_provider_answers_with_its_keys(provider: Provider,
                                                            tmp_path: Path) -> None:
    config = issuer_config(tmp_path, provider, "discovery = true")
    loaded = load_config(config, env={})
    check = identity_providers_check(loaded)
    assert check.ok and check.detail == f"{provider.issuer}: 1 key(s)"
    provider.stop()
    down = identity_providers_check(loaded)
    assert not down.ok and provider.issuer in down.detail and "jwks_unavailable" in down.fix
    assert identity_providers_check(load_config(EXAMPLE_CONFIG, env={})).ok  # none: nothing to do
