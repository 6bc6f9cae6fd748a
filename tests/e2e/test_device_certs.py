"""Device certificates (mTLS) through real HAProxy: the shipped haproxy.cfg with
TLS_CLIENT_CA set verifies client certificates (`verify optional`) and names a
verified one to the agent by its SHA-256; a registered certificate is a
principal like an API key, a revoked or unknown one falls back to the
request's key, and one HAProxy could not verify never reaches the agent.
Certificates are made at test time (tests/certs.py)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from spoa_agent.demo.stack import Gateway
from tests.certs import Ca, Issued
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer
from tests.e2e.conftest import create_key
from tests.e2e.test_gateway_edge import SniConnection

HOST = "models.test"


@dataclass
class MtlsGateway:
    gw: Gateway
    ca: Ca
    server_ca: Path  # what clients trust for the gateway's own certificate
    port: int

    def get(self, path: str = "/v1/models", device: Issued | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS request, presenting `device`'s certificate if given."""
        context = ssl.create_default_context(cafile=str(self.server_ca))
        if device is not None:
            context.load_cert_chain(*device.pair)
        conn = SniConnection(HOST, self.port, context)
        try:
            conn.request("GET", path, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def device(self, *args: str) -> str:
        result = self.gw.spoa_agent("device", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def mtls(haproxy: str, tmp_path: Path) -> Iterator[MtlsGateway]:
    server_ca = Ca(tmp_path / "server-ca", "Test Server CA")
    server_ca.serve(tmp_path / "certs", HOST)
    ca = Ca(tmp_path / "device-ca")
    gw = Gateway(tmp_path)
    port = gw.use_tls(tmp_path / "certs", client_ca=ca.path)
    try:
        gw.start_redis()
        gw.start_upstream()
        gw.start_agent(EXAMPLE_CONFIG)
        gw.start_haproxy(haproxy)
        yield MtlsGateway(gw, ca, server_ca.path, port)
    finally:
        gw.stop()


def code(body: bytes) -> str:
    error = json.loads(body)["error"]
    return str(error["code"])


def eventually(check: MtlsGateway, device: Issued, status: int, within: float = 3.0) -> int:
    """The status, once it is `status` (a change reaches every agent within a second)."""
    deadline = time.monotonic() + within
    while True:
        got = check.get(device=device)[0]
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_registered_certificate_gets_in_without_a_key(mtls: MtlsGateway) -> None:
    laptop = mtls.ca.issue("laptop")
    assert mtls.get(device=laptop)[0] == 401  # not registered yet, and no key
    added = json.loads(mtls.device("add", "--cert", str(laptop.cert), "--name", "laptop",
                                   "--format", "json"))
    assert added["cert_sha256"] == laptop.sha256 and added["id"] == laptop.sha256[:12]
    assert eventually(mtls, laptop, 200) == 200
    status, headers, _ = mtls.get(device=laptop)
    assert status == 200 and headers["x-upstream-principal"] == "laptop"
    # A key sent beside it changes nothing: the certificate is the caller.
    status, headers, _ = mtls.get(device=laptop, headers=bearer("spoa_not_a_key"))
    assert status == 200 and headers["x-upstream-principal"] == "laptop"
    # Without the certificate, the same client is nobody.
    status, _, body = mtls.get()
    assert status == 401 and code(body) == "missing_api_key"
    listed = mtls.device("list")
    assert "laptop" in listed and laptop.sha256 in listed


def test_a_revoked_certificate_is_refused_and_a_key_still_works(mtls: MtlsGateway) -> None:
    laptop = mtls.ca.issue("laptop")
    mtls.device("add", "--cert", str(laptop.cert), "--name", "laptop")
    assert eventually(mtls, laptop, 200) == 200  # cached by the agent now
    assert "Revoked" in mtls.device("revoke", laptop.sha256[:12])
    assert eventually(mtls, laptop, 401, within=1.5) == 401
    status, _, body = mtls.get(device=laptop)
    assert status == 401 and code(body) == "revoked_device_certificate"
    # The same client with an API key: the key decides.
    key = str(create_key(mtls.gw, "--name", "laptop-key")["token"])
    status, headers, _ = mtls.get(device=laptop, headers=bearer(key))
    assert status == 200 and headers["x-upstream-principal"] == "laptop-key"
    # Logged as an auth failure naming the device's id, never its fingerprint.
    agent_log = mtls.gw.processes["agent"].log()
    refusals = [json.loads(line) for line in agent_log.splitlines()
                if '"revoked_device"' in line]
    assert refusals and all(r["event.action"] == "auth_failed" for r in refusals)
    assert {r.get("key_id") for r in refusals} == {laptop.sha256[:12]}
    assert laptop.sha256 not in agent_log


def test_an_unknown_certificate_falls_back_to_the_key(mtls: MtlsGateway) -> None:
    stranger = mtls.ca.issue("stranger")  # signed by the CA, never registered
    status, _, body = mtls.get(device=stranger)
    assert status == 401 and code(body) == "unknown_device_certificate"
    key = str(create_key(mtls.gw, "--name", "e2e-client")["token"])
    status, headers, _ = mtls.get(device=stranger, headers=bearer(key))
    assert status == 200 and headers["x-upstream-principal"] == "e2e-client"


def test_a_certificate_haproxy_cannot_verify_is_no_credential(mtls: MtlsGateway,
                                                              tmp_path: Path) -> None:
    """Another CA's certificate, or an expired one, even registered: the handshake
    goes on (keys still work), and the agent never hears of the certificate."""
    other = Ca(tmp_path / "other-ca", "Other CA").issue("intruder")
    expired = mtls.ca.issue("old-laptop", expired=True)
    for cert, name in ((other, "intruder"), (expired, "old-laptop")):
        mtls.device("add", "--cert", str(cert.cert), "--name", name)
    key = str(create_key(mtls.gw, "--name", "e2e-client")["token"])
    time.sleep(0.5)
    for cert in (other, expired):
        status, _, body = mtls.get(device=cert)
        assert status == 401 and code(body) == "missing_api_key", cert
        status, headers, _ = mtls.get(device=cert, headers=bearer(key))
        assert status == 200 and headers["x-upstream-principal"] == "e2e-client"


def test_a_device_has_its_keys_limits(mtls: MtlsGateway) -> None:
    phone = mtls.ca.issue("phone")
    mtls.device("add", "--cert", str(phone.cert), "--name", "phone", "--rate", "2/m")
    assert eventually(mtls, phone, 200) == 200
    statuses = [mtls.get(device=phone)[0] for _ in range(3)]
    assert statuses[-1] == 429 and statuses.count(200) <= 1, statuses


def test_an_sdk_that_insists_on_a_key_gets_in_with_the_certificate(mtls: MtlsGateway) -> None:
    """The OpenAI SDK needs an api_key: any string does beside a registered
    certificate (its own httpx client presents the certificate)."""
    laptop = mtls.ca.issue("laptop")
    mtls.device("add", "--cert", str(laptop.cert), "--name", "laptop")
    assert eventually(mtls, laptop, 200) == 200

    def client(device: Issued | None) -> openai.OpenAI:
        context = ssl.create_default_context(cafile=str(mtls.server_ca))
        if device is not None:
            context.load_cert_chain(*device.pair)
        return openai.OpenAI(base_url=f"https://127.0.0.1:{mtls.port}/v1",
                             api_key="no-key-needed", max_retries=0,
                             http_client=httpx.Client(verify=context, timeout=10))

    with client(laptop) as sdk:
        assert [model.id for model in sdk.models.list()]
    with client(None) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list()



class Resuming(SniConnection):
    """SniConnection offering a TLS session to resume."""

    def __init__(self, port: int, context: ssl.SSLContext,
                 session: ssl.SSLSession | None) -> None:
        super().__init__(HOST, port, context)
        self.session = session

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            sock, server_hostname=self.host, session=self.session)


def test_a_resumed_tls_session_is_still_the_device(mtls: MtlsGateway) -> None:
    """A client resuming its TLS session presents no certificate again: HAProxy
    still knows the session's verified certificate, so the device stays the
    caller rather than turning into a client without a credential."""
    laptop = mtls.ca.issue("laptop")
    mtls.device("add", "--cert", str(laptop.cert), "--name", "laptop")
    assert eventually(mtls, laptop, 200) == 200
    context = ssl.create_default_context(cafile=str(mtls.server_ca))
    context.load_cert_chain(*laptop.pair)
    # Session ids (haproxy.cfg turns tickets off), which TLS 1.2 resumes.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    session = None
    for attempt in range(3):
        conn = Resuming(mtls.port, context, session)
        try:
            conn.request("GET", "/v1/models")
            answer = conn.getresponse()
            answer.read()
            sock = conn.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.session_reused is (attempt > 0), attempt
            assert answer.status == 200, attempt
            assert answer.getheader("x-upstream-principal") == "laptop"
            session = sock.session
        finally:
            conn.close()
