"""[oidc] settings: the OpenID provider browsers sign in with, and the
sessions the gateway keeps for them (spoa_agent/oidc)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The client secret from the environment wins over the file's (it never
# needs to sit in the config file, nor in any process's arguments).
ENV_CLIENT_SECRET = "SPOA_AGENT_OIDC_CLIENT_SECRET"
PUBLIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                     "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    idle_lifetime: float = 8 * 3600.0
    absolute_lifetime: float = 7 * 86400.0
    timeout: float = 5.0
    leeway: float = 30.0

    def __post_init__(self) -> None:
        if "openid" not in self.scopes:
            raise ValueError('scopes must include "openid"')
        bad = set(self.algorithms) - set(PUBLIC_ALGORITHMS)
        if bad or not self.algorithms:
            raise ValueError(f"algorithms must be public-key algorithms, not {sorted(bad)}")
        if self.idle_lifetime > self.absolute_lifetime:
            raise ValueError("idle_lifetime must not exceed absolute_lifetime")


def read_secret(value: object, file: object, env: dict[str, str] | None = None) -> str:
    """The client secret: env SPOA_AGENT_OIDC_CLIENT_SECRET, else
    client_secret_file's first line, else client_secret."""
    env = dict(os.environ) if env is None else env
    if env.get(ENV_CLIENT_SECRET):
        return env[ENV_CLIENT_SECRET]
    if file is not None:
        if not isinstance(file, str):
            raise ValueError("client_secret_file must be a path")
        try:
            return Path(file).read_text().strip()
        except OSError as err:
            raise ValueError(f"client_secret_file {file}: cannot read: {err.strerror}") from None
    if value is not None and not isinstance(value, str):
        raise ValueError("client_secret must be a string")
    return value or ""
