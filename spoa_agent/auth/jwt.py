"""JWT bearer tokens (pyjwt): keys from PEM or JWKS files, or fetched from a
JWKS URL or through OpenID discovery (auth/jwks.py), per issuer.

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

from spoa_agent.auth.jwks import RemoteKeys, check_url
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
    jwks_url: str | None = None
    discovery: bool = False  # keys from the issuer's /.well-known/openid-configuration
    jwks_max_age: float = 600.0     # fetched again (in the background) past this age
    jwks_min_refresh: float = 10.0  # an unknown kid fetches again at most this often
    jwks_timeout: float = 5.0

    def __post_init__(self) -> None:
        algorithms = frozenset(self.algorithms)
        if not algorithms:
            raise JwtConfigError("algorithms must name at least one algorithm")
        unknown = algorithms - _HMAC - _PUBLIC
        if unknown:
            raise JwtConfigError(f"algorithms not allowed: {sorted(unknown)}")
        if algorithms & _HMAC and algorithms & _PUBLIC:
            raise JwtConfigError("do not mix HMAC (HS*) and public-key algorithms in one issuer")
        sources = [self.pem_file is not None, self.jwks_file is not None,
                   self.jwks_url is not None, self.discovery]
        if sum(sources) != 1:
            raise JwtConfigError(
                "set exactly one of pem_file, jwks_file, jwks_url and discovery = true")
        if self.remote and algorithms & _HMAC:
            raise JwtConfigError("keys from a URL are public keys: HS* algorithms need pem_file")
        try:
            if self.jwks_url is not None:
                check_url(self.jwks_url, "jwks_url")
            if self.discovery:
                check_url(self.issuer, "issuer (with discovery = true)")
        except ValueError as err:
            raise JwtConfigError(str(err)) from None
        for name in ("jwks_max_age", "jwks_min_refresh", "jwks_timeout"):
            if not 0 < getattr(self, name) <= 86400:
                raise JwtConfigError(f"{name} must be between 0 and 86400 seconds")

    @property
    def remote(self) -> bool:
        return self.jwks_url is not None or self.discovery


class _Issuer:
    def __init__(self, config: IssuerConfig, remote: RemoteKeys | None = None,
                 log: Any = None) -> None:
        self.config = config
        self.single_key: Any = None
        self.by_kid: dict[str, Any] = {}
        self.remote: RemoteKeys | None = None
        if config.remote:
            self.remote = remote or RemoteKeys(
                config.issuer, config.jwks_url, max_age=config.jwks_max_age,
                min_refresh=config.jwks_min_refresh, timeout=config.jwks_timeout, log=log)
        elif config.pem_file is not None:
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
        if self.remote is not None:
            return self.remote.get(kid)
        return self.by_kid.get(kid or "")

    def missing_key(self) -> AuthFailure | None:
        """No key for the token's kid: None when a fetch may find it now;
        otherwise unknown_kid, or jwks_unavailable (503) when the provider
        could not be asked (never answered, or its last fetch failed)."""
        remote = self.remote
        if remote is None:
            return AuthFailure(Reason.UNKNOWN_KID)
        if remote.may_refresh():
            return None
        if remote.failed or remote.fetched_at is None:
            return AuthFailure(Reason.JWKS_UNAVAILABLE)
        return AuthFailure(Reason.UNKNOWN_KID)


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
    """`previous`: the verifier this one replaces (a reload); an issuer whose
    key settings did not change keeps its fetched keys."""

    def __init__(self, issuers: tuple[IssuerConfig, ...], previous: JwtVerifier | None = None,
                 log: Any = None) -> None:
        kept = {} if previous is None else {
            _remote_settings(i.config): i.remote for i in previous._issuers.values()
            if i.remote is not None}
        self._issuers: dict[str, _Issuer] = {
            config.issuer: _Issuer(config, kept.get(_remote_settings(config)), log)
            for config in issuers}

    def __bool__(self) -> bool:
        return bool(self._issuers)

    def verify(self, token: str) -> Principal | AuthFailure | None:
        """None: the issuer's keys must be fetched first (verify_fetching())."""
        found = self._issuer_of(token)
        if isinstance(found, AuthFailure):
            return found
        issuer, header = found
        key = issuer.key_for(header.get("kid"))
        if key is None:
            return issuer.missing_key()
        return self._verify(token, issuer, key)

    async def verify_fetching(self, token: str) -> Principal | AuthFailure:
        """verify() after fetching the issuer's keys (a kid not seen yet)."""
        found = self._issuer_of(token)
        if isinstance(found, AuthFailure):
            return found
        issuer, header = found
        if issuer.remote is not None:
            await issuer.remote.refresh_if_allowed()
        key = issuer.key_for(header.get("kid"))
        if key is None:
            failure = issuer.missing_key()
            if failure is None:  # the bound let it through since: not this time
                failure = AuthFailure(Reason.JWKS_UNAVAILABLE if issuer.remote is not None
                                      and issuer.remote.failed else Reason.UNKNOWN_KID)
            return failure
        return self._verify(token, issuer, key)

    def _issuer_of(self, token: str) -> tuple[_Issuer, dict[str, Any]] | AuthFailure:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):
            return AuthFailure(Reason.MALFORMED_TOKEN)
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            return AuthFailure(Reason.UNKNOWN_ISSUER)
        if header.get("alg") not in issuer.config.algorithms:
            return AuthFailure(Reason.ALGORITHM_NOT_ALLOWED)
        return issuer, header

    def _verify(self, token: str, issuer: _Issuer, key: Any) -> Principal | AuthFailure:
        config = issuer.config
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


def _remote_settings(config: IssuerConfig) -> tuple[object, ...]:
    return (config.issuer, config.jwks_url, config.discovery, config.jwks_max_age,
            config.jwks_min_refresh, config.jwks_timeout)


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
        jwks_url=data.get("jwks_url"),
        discovery=_bool(data.get("discovery", False), "discovery"),
        jwks_max_age=float(data.get("jwks_max_age", 600)),
        jwks_min_refresh=float(data.get("jwks_min_refresh", 10)),
        jwks_timeout=float(data.get("jwks_timeout", 5)),
    )


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise JwtConfigError(f"{name} must be true or false")
    return value
