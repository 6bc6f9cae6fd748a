"""Keys from a URL (auth/jwks.py): fetched on need, at most every
min_refresh for an unknown kid, in the background past max_age, and the
last good set kept when a fetch fails. The fetch itself is a function here;
tests/integration/test_jwks_provider.py fetches from a real provider."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from spoa_agent.auth.jwks import KeyFetchError, RemoteKeys, check_url
from spoa_agent.auth.jwt import IssuerConfig, JwtConfigError, JwtVerifier, load_issuer
from spoa_agent.auth.principal import AuthFailure, Principal
from spoa_agent.reasons import Reason

ISSUER = "https://id.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_key(kid: str) -> tuple[Any, jwt.PyJWK]:
    private = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    public.update(kid=kid, alg="ES256")
    return private, jwt.PyJWK.from_dict(public)


class Provider:
    """What the fetch returns (or raises), and how often it was called."""

    def __init__(self, *kids: str) -> None:
        self.private: dict[str, Any] = {}
        self.published: dict[str, jwt.PyJWK] = {}
        self.down = False
        self.calls = 0
        for kid in kids:
            self.add(kid)

    def add(self, kid: str) -> None:
        private, public = make_key(kid)
        self.private[kid], self.published[kid] = private, public

    def fetch(self, url: str | None, issuer: str, timeout: float) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise KeyFetchError("https://id.test/jwks: connection refused")
        return dict(self.published)

    def token(self, kid: str, sub: str = "alice") -> str:
        return jwt.encode({"iss": ISSUER, "sub": sub, "exp": int(time.time()) + 60},
                          self.private[kid], algorithm="ES256", headers={"kid": kid})


def verifier(idp: Provider, clock: Clock, min_refresh: float = 10,
             max_age: float = 600) -> JwtVerifier:
    config = IssuerConfig(issuer=ISSUER, algorithms=("ES256",), discovery=True,
                          jwks_min_refresh=min_refresh, jwks_max_age=max_age)
    keys = RemoteKeys(ISSUER, None, max_age=max_age, min_refresh=min_refresh, timeout=1,
                      clock=clock, fetch=idp.fetch)
    v = JwtVerifier((config,))
    v._issuers[ISSUER].remote = keys
    return v


def test_first_token_fetches_then_verifies() -> None:
    idp, clock = Provider("k1"), Clock()
    v = verifier(idp, clock)
    token = idp.token("k1")
    assert v.verify(token) is None  # keys must be fetched first

    async def run() -> Principal | AuthFailure:
        return await v.verify_fetching(token)
    assert isinstance(asyncio.run(run()), Principal)
    assert isinstance(v.verify(idp.token("k1", "bob")), Principal)
    assert idp.calls == 1


def test_unknown_kid_fetches_at_most_once_per_min_refresh() -> None:
    idp, clock = Provider("k1"), Clock()
    v = verifier(idp, clock)

    async def run() -> None:
        await v.verify_fetching(idp.token("k1"))
        idp.add("k2")
        clock.now += 5  # within min_refresh: no fetch, refused as unknown
        assert v.verify(idp.token("k2")) == AuthFailure(Reason.UNKNOWN_KID)
        assert idp.calls == 1
        clock.now += 5
        assert v.verify(idp.token("k2")) is None
        # Many made-up kids at once share one fetch, then wait for the bound.
        results = await asyncio.gather(*(v.verify_fetching(idp.token("k2", f"u{i}"))
                                         for i in range(20)))
        assert all(isinstance(r, Principal) for r in results)
        assert idp.calls == 2
        idp.private["evil"] = make_key("evil")[0]  # never published
        assert v.verify(idp.token("evil")) == AuthFailure(Reason.UNKNOWN_KID)
        assert await v.verify_fetching(idp.token("evil")) == AuthFailure(Reason.UNKNOWN_KID)
        assert idp.calls == 2
    asyncio.run(run())


def test_provider_down_keeps_last_good_keys() -> None:
    idp, clock = Provider("k1"), Clock()
    v = verifier(idp, clock, min_refresh=1, max_age=5)

    async def run() -> None:
        assert isinstance(await v.verify_fetching(idp.token("k1")), Principal)
        idp.down = True
        clock.now += 10  # stale: a background fetch starts, and fails
        assert isinstance(v.verify(idp.token("k1", "bob")), Principal)
        await asyncio.sleep(0.1)
        assert idp.calls == 2
        assert isinstance(v.verify(idp.token("k1", "carol")), Principal)
        idp.add("k2")
        clock.now += 2
        assert await v.verify_fetching(idp.token("k2")) == \
            AuthFailure(Reason.JWKS_UNAVAILABLE)
        # Within the bound after a failed fetch: still the gateway's trouble.
        assert v.verify(idp.token("k2")) == AuthFailure(Reason.JWKS_UNAVAILABLE)
        idp.down = False
        clock.now += 2
        assert isinstance(await v.verify_fetching(idp.token("k2")), Principal)
    asyncio.run(run())


def test_never_fetched_is_the_gateways_trouble() -> None:
    idp, clock = Provider("k1"), Clock()
    idp.down = True
    v = verifier(idp, clock)

    async def run() -> None:
        assert await v.verify_fetching(idp.token("k1")) == AuthFailure(Reason.JWKS_UNAVAILABLE)
    asyncio.run(run())
    assert v.verify(idp.token("k1")) == AuthFailure(Reason.JWKS_UNAVAILABLE)


def test_reload_keeps_fetched_keys_of_an_unchanged_issuer() -> None:
    idp, clock = Provider("k1"), Clock()
    v = verifier(idp, clock)
    asyncio.run(v.verify_fetching(idp.token("k1")))
    same = JwtVerifier((v._issuers[ISSUER].config,), previous=v)
    assert isinstance(same.verify(idp.token("k1", "bob")), Principal)
    changed = JwtVerifier((IssuerConfig(issuer=ISSUER, algorithms=("ES256",),
                                        jwks_url="https://id.test/other"),), previous=v)
    assert changed.verify(idp.token("k1", "bob")) is None


@pytest.mark.parametrize(("table", "error"), [
    ({"jwks_url": "http://id.example.com/jwks"}, "must use https"),
    ({"jwks_url": "ftp://127.0.0.1/jwks"}, "http(s) URL"),
    ({"jwks_url": 5}, "URL string"),
    ({"discovery": "yes"}, "true or false"),
    ({"discovery": True, "jwks_file": "/x"}, "exactly one"),
    ({"jwks_url": "https://id.test/jwks", "algorithms": ["HS256"]}, "HS*"),
    ({"jwks_url": "https://id.test/jwks", "jwks_min_refresh": 0}, "jwks_min_refresh"),
])
def test_bad_settings_are_named(table: dict[str, Any], error: str) -> None:
    with pytest.raises(JwtConfigError, match=error.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        load_issuer({"issuer": ISSUER, "algorithms": ["ES256"], **table})


def test_loopback_may_use_http() -> None:
    for url in ("http://127.0.0.1:8080/jwks", "http://[::1]/jwks", "http://localhost/jwks"):
        assert check_url(url, "jwks_url") == url
