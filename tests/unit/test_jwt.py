"""JWT verification with real keys made here: what is accepted and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from spoa_agent.auth import IssuerConfig, JwtConfigError
from spoa_agent.auth.authenticator import Authenticator, AuthSettings
from spoa_agent.auth.hashing import SecretHasher, VerifierPool
from spoa_agent.auth.jwt import JwtVerifier
from spoa_agent.auth.principal import AuthFailure, Principal
from spoa_agent.reasons import Reason

ISSUER = "https://id.example.test/"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PRIVATE = _rsa()
OTHER = _rsa()
PUBLIC_PEM = PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("jwt")
    pem = folder / "idp.pem"
    pem.write_bytes(PUBLIC_PEM)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE.public_key()))
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    return pem, jwks


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"iss": ISSUER, "sub": "alice", "aud": "ai-gateway",
                               "exp": now + 300, "iat": now, "scope": "chat models"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, object], key: object = PRIVATE, alg: str = "RS256",
         kid: str | None = "k1") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)  # type: ignore[arg-type]


@pytest.fixture(params=["pem", "jwks"])
def verifier(request: pytest.FixtureRequest, key_files: tuple[Path, Path]) -> JwtVerifier:
    pem, jwks = key_files
    source = {"pem_file": str(pem)} if request.param == "pem" else {"jwks_file": str(jwks)}
    return JwtVerifier((IssuerConfig(issuer=ISSUER, algorithms=("RS256",),
                                     audience=("ai-gateway",), leeway=5, **source),))


def test_valid_token(verifier: JwtVerifier) -> None:
    result = verifier.verify(sign(claims()))
    assert isinstance(result, Principal)
    assert (result.kind, result.id, result.name) == ("jwt", "alice", "alice")
    assert result.scopes == frozenset({"chat", "models"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(payload: dict[str, object], secret: bytes) -> str:
    """The HS/RS confusion attack, by hand: pyjwt itself refuses to make it."""
    signing_input = (_b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
                     + "." + _b64(json.dumps(payload).encode()))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def _none_token() -> str:
    return jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]


REFUSED = [
    ("expired", lambda: sign(claims(exp=int(time.time()) - 60)), "expired_token"),
    ("not yet valid", lambda: sign(claims(nbf=int(time.time()) + 60)), "token_not_yet_valid"),
    ("wrong audience", lambda: sign(claims(aud="other")), "wrong_audience"),
    ("unknown issuer", lambda: sign(claims(iss="https://evil.test/")), "unknown_issuer"),
    ("alg none", _none_token, "algorithm_not_allowed"),
    ("HS256 signed with the RS256 public key", lambda: forge_hs256(claims(), PUBLIC_PEM),
     "algorithm_not_allowed"),
    ("signed by another key", lambda: sign(claims(), key=OTHER), "bad_signature"),
    ("no exp", lambda: sign(claims(exp=None)), "missing_claim"),
    ("garbage", lambda: "eyJhbGciOi.not-a.token", "malformed_token"),
]


@pytest.mark.parametrize(("name", "make", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(verifier: JwtVerifier, name: str, make: object, reason: str) -> None:
    result = verifier.verify(make())  # type: ignore[operator]
    assert result == AuthFailure(Reason(reason))


def test_unknown_kid_with_jwks(key_files: tuple[Path, Path]) -> None:
    verifier = JwtVerifier((IssuerConfig(issuer=ISSUER, algorithms=("RS256",),
                                         jwks_file=str(key_files[1])),))
    assert verifier.verify(sign(claims(), kid="k2")) == AuthFailure(Reason.UNKNOWN_KID)


def test_wrong_issuer_claim_under_known_key(key_files: tuple[Path, Path]) -> None:
    # Two issuers; a token naming issuer A but signed for B's key is refused.
    other_pem = key_files[0].parent / "other.pem"
    other_pem.write_bytes(OTHER.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    verifier = JwtVerifier((
        IssuerConfig(issuer=ISSUER, algorithms=("RS256",), pem_file=str(key_files[0])),
        IssuerConfig(issuer="https://b.test/", algorithms=("RS256",), pem_file=str(other_pem)),
    ))
    assert isinstance(verifier.verify(sign(claims(iss="https://b.test/"), key=OTHER)), Principal)
    assert verifier.verify(sign(claims(iss="https://b.test/"))) == AuthFailure(Reason.BAD_SIGNATURE)


@pytest.mark.parametrize(("algorithms", "files"), [
    ((), {"pem_file": "x"}),
    (("none",), {"pem_file": "x"}),
    (("HS256", "RS256"), {"pem_file": "x"}),
    (("RS256",), {}),
    (("RS256",), {"pem_file": "x", "jwks_file": "y"}),
])
def test_unsafe_issuer_configs_are_refused(algorithms: tuple[str, ...],
                                           files: dict[str, str]) -> None:
    with pytest.raises(JwtConfigError):
        IssuerConfig(issuer=ISSUER, algorithms=algorithms, **files)  # type: ignore[arg-type]


def test_a_verified_token_is_served_from_the_cache_until_exp_plus_leeway(
        key_files: tuple[Path, Path]) -> None:
    pem, _ = key_files
    issuer = IssuerConfig(issuer=ISSUER, algorithms=("RS256",), audience=("ai-gateway",),
                          leeway=5, pem_file=str(pem))
    now = [time.time()]
    auth = Authenticator(AuthSettings(issuers=(issuer,), cache_ttl=3600), None,
                         VerifierPool(SecretHasher(), 1), structlog.get_logger(),
                         clock=lambda: now[0])
    token = sign(claims(exp=int(now[0]) + 60))
    first = auth.quick(token)
    assert isinstance(first, Principal) and first.id == "alice"
    assert auth.quick(token) == first
    assert auth.verified.hits == 1  # the second check skipped the signature
    now[0] = int(now[0]) + 64
    assert auth.quick(token) == first  # within the leeway
    now[0] += 1
    assert auth.quick(token) == AuthFailure(Reason.EXPIRED_TOKEN, "alice")
    # A bad token is never cached as good.
    forged = sign(claims(), key=OTHER)
    assert auth.quick(forged) == AuthFailure(Reason.BAD_SIGNATURE)
    assert len(auth.verified) == 1
