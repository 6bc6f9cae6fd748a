"""A JWT from a configured issuer through a real agent process."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spoa_agent.demo.stack import Gateway
from spoa_agent.spop import Ack, SetVar
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer


def test_jwt_is_accepted_and_names_its_subject(redis_gw: Gateway, tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "idp.pem"
    pem.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + f'''
[[jwt.issuers]]
issuer = "https://id.test/"
audience = "ai-gateway"
algorithms = ["ES256"]
pem_file = "{pem}"
''')
    redis_gw.start_agent(config)
    peer = Peer(redis_gw.agent_port)
    peer.hello()
    now = int(time.time())
    good = jwt.encode({"iss": "https://id.test/", "aud": "ai-gateway", "sub": "alice",
                       "exp": now + 60}, private, algorithm="ES256")
    stale = jwt.encode({"iss": "https://id.test/", "aud": "ai-gateway", "sub": "alice",
                        "exp": now - 120}, private, algorithm="ES256")
    answers = []
    for stream, token in enumerate((good, stale)):
        peer.notify(stream, method="GET", path="/api/tags", authorization=f"Bearer {token}")
        ack = peer.read()
        assert isinstance(ack, Ack)
        answers.append({a.name: a.value for a in ack.actions if isinstance(a, SetVar)})
    assert answers[0]["decision"] == "allow" and answers[0]["principal"] == "alice"
    assert (answers[1]["status"], answers[1]["reason"]) == (401, "expired_token")
