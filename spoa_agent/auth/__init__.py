"""Authentication: API keys (argon2id hashes in Redis) and JWTs (pyjwt)."""

from spoa_agent.auth.authenticator import Authenticator, AuthSettings
from spoa_agent.auth.hashing import Argon2Params, SecretHasher, VerifierPool
from spoa_agent.auth.jwt import IssuerConfig, JwtConfigError
from spoa_agent.auth.principal import AuthFailure, Principal

__all__ = [
    "Argon2Params", "AuthFailure", "AuthSettings", "Authenticator", "IssuerConfig",
    "JwtConfigError", "Principal", "SecretHasher", "VerifierPool",
]
