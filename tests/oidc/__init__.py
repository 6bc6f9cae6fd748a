"""A real OpenID provider for the tests: npm's oidc-provider (provider.mjs),
started on a free port from a JSON settings file and stopped after.

`make deps` installs it (scripts/install-system-deps.sh runs `npm ci` here).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from spoa_agent.demo.stack import free_port

HERE = Path(__file__).parent
SCRIPT = HERE / "provider.mjs"


def signing_key(kid: str) -> dict[str, Any]:
    """A fresh ES256 private key as a JWK, named `kid`."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private))
    jwk.update(kid=kid, alg="ES256", use="sig")
    return jwk


@dataclass
class Provider:
    """One provider process; start() again (after stop()) serves the new
    settings on the same port, as a provider that rotated its keys."""

    keys: list[dict[str, Any]]
    clients: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Provider:
        node = shutil.which("node")
        if node is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("oidc-provider is not installed: run `make deps`")
        settings = Path(tempfile.mkdtemp(prefix="oidc-provider-")) / "settings.json"
        settings.write_text(json.dumps({"port": self.port, "issuer": self.issuer,
                                        "keys": self.keys, "clients": self.clients,
                                        "users": self.users}))
        self.process = subprocess.Popen([node, str(SCRIPT), str(settings)], cwd=HERE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "listening":
            self.process.kill()
            _, err = self.process.communicate(timeout=5)
            raise RuntimeError(f"oidc-provider did not start: {line}{err}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
            self.process = None

    def client_credentials_token(self, client_id: str, secret: str) -> str:
        """A JWT access token for the gateway (aud ai-gateway), from /token."""
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        request = urllib.request.Request(
            f"{self.issuer}/token", method="POST",
            data=urllib.parse.urlencode({"grant_type": "client_credentials",
                                         "scope": "models"}).encode(),
            headers={"Authorization": f"Basic {basic}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.load(response)["access_token"])
