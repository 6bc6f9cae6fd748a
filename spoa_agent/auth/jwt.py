"""JWT bearer tokens (pyjwt): keys from PEM or JWKS files, per issuer.

Each issuer has an explicit algorithm allowlist; `none` is never accepted and
an issuer cannot mix HMAC with public-key algorithms, so an HS256 token
signed with an RS256 public key is refused (the HS/RS confusion attack).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from spoa_agent.auth.principal import AuthFailure, Principal
from spoa_agent.reasons import Reason

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                     "ES256", "ES384", "ES512", "EdDSA"})


class JwtConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    algorithms: tuple[str, ...]
    audience: tuple[str, ...] = ()
    pem_file: str | None = None
    jwks_file: str | None = None
    scopes_claim: str = "scope"
    leeway: float = 30.0

    def __post_init__(self) -> None:
        algorithms = frozenset(self.algorithms)
        if not algorithms:
            raise JwtConfigError("algorithms must name at least one algorithm")
        unknown = algorithms - _HMAC - _PUBLIC
        if unknown:
            raise JwtConfigError(f"algorithms not allowed: {sorted(unknown)}")
        if algorithms & _HMAC and algorithms & _PUBLIC:
            raise JwtConfigError("do not mix HMAC (HS*) and public-key algorithms in one issuer")
        if (self.pem_file is None) == (self.jwks_file is None):
            raise JwtConfigError("set exactly one of pem_file and jwks_file")


class _Issuer:
    def __init__(self, config: IssuerConfig) -> None:
        self.config = config
        self.single_key: Any = None
        self.by_kid: dict[str, Any] = {}
        if config.pem_file is not None:
            self.single_key = _public_key(_read(config.pem_file))
        else:
            assert config.jwks_file is not None
            try:
                keyset = jwt.PyJWKSet.from_json(_read(config.jwks_file))
            except (jwt.PyJWTError, ValueError) as err:
                raise JwtConfigError(f"{config.jwks_file}: not a usable JWKS: {err}") from None
            self.by_kid = {key.key_id: key for key in keyset.keys if key.key_id}

    def key_for(self, kid: str | None) -> Any:
        if self.single_key is not None:
            return self.single_key
        return self.by_kid.get(kid or "")


def _public_key(pem: str) -> Any:
    """A public key parsed once, not on every decode (pyjwt would parse a PEM
    string each time: ~0.1 ms); an HMAC secret or anything else stays text."""
    try:
        return serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return pem


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise JwtConfigError(f"{path}: cannot read: {err.strerror}") from None


_REASONS: list[tuple[type[Exception], Reason]] = [
    (jwt.ExpiredSignatureError, Reason.EXPIRED_TOKEN),
    (jwt.ImmatureSignatureError, Reason.TOKEN_NOT_YET_VALID),
    (jwt.InvalidAudienceError, Reason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, Reason.WRONG_ISSUER),
    (jwt.MissingRequiredClaimError, Reason.MISSING_CLAIM),
    (jwt.InvalidAlgorithmError, Reason.ALGORITHM_NOT_ALLOWED),
    (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE),
]


class JwtVerifier:
    def __init__(self, issuers: tuple[IssuerConfig, ...]) -> None:
        self._issuers = {config.issuer: _Issuer(config) for config in issuers}

    def __bool__(self) -> bool:
        return bool(self._issuers)

    def verify(self, token: str) -> Principal | AuthFailure:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):
            return AuthFailure(Reason.MALFORMED_TOKEN)
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            return AuthFailure(Reason.UNKNOWN_ISSUER)
        config = issuer.config
        if header.get("alg") not in config.algorithms:
            return AuthFailure(Reason.ALGORITHM_NOT_ALLOWED)
        key = issuer.key_for(header.get("kid"))
        if key is None:
            return AuthFailure(Reason.UNKNOWN_KID)
        try:
            claims = jwt.decode(
                token, key, algorithms=list(config.algorithms),
                audience=list(config.audience) or None, issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "sub"], "verify_aud": bool(config.audience)},
            )
        except jwt.PyJWTError as err:
            for kind, reason in _REASONS:
                if isinstance(err, kind):
                    return AuthFailure(reason)
            return AuthFailure(Reason.INVALID_TOKEN)
        # Refused from exp + leeway on, as pyjwt would: a cached token is
        # checked against this on every use.
        return Principal(
            kind="jwt", id=str(claims["sub"]), name=str(claims["sub"]),
            scopes=_scopes(claims.get(config.scopes_claim)),
            expires_at=float(claims["exp"]) + config.leeway,
        )


def _scopes(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset()


def load_issuer(data: dict[str, Any]) -> IssuerConfig:
    """An IssuerConfig from a TOML table ([[jwt.issuers]])."""
    audience = data.get("audience", ())
    return IssuerConfig(
        issuer=str(data["issuer"]),
        algorithms=tuple(data["algorithms"]),
        audience=(audience,) if isinstance(audience, str) else tuple(audience),
        pem_file=data.get("pem_file"),
        jwks_file=data.get("jwks_file"),
        scopes_claim=str(data.get("scopes_claim", "scope")),
        leeway=float(data.get("leeway", 30)),
    )
