"""The gateway's edge as deployed: TLS with SNI for two hostnames routed by
haproxy/hosts.map to two upstreams, plain HTTP redirected once TLS is on,
and WebSocket upgrades (OpenWebUI) passed through."""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoa_agent.demo.stack import Gateway, free_port
from spoa_agent.demo.upstream import websocket_accept
from tests.conftest import EXAMPLE_CONFIG, OWN_LOGIN_ROUTE
from tests.e2e.client import bearer, request
from tests.e2e.conftest import create_key
from tests.e2e.test_gateway import stats
from tests.websocket import ws_recv, ws_send, ws_upgrade

HOSTS = ("models.test", "chat.test")


def self_signed(hostname: str, directory: Path) -> Path:
    """A throwaway certificate in HAProxy's PEM layout (cert then key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = directory / f"{hostname}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return pem


class SniConnection(http.client.HTTPSConnection):
    """HTTPS to the gateway's loopback port, presenting `host` as SNI and Host
    (as a client resolving the name to the gateway would)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=10)

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


@pytest.fixture
def tls_gw(haproxy: str, tmp_path: Path) -> Iterator[tuple[Gateway, ssl.SSLContext, int]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    context = ssl.create_default_context()
    for host in HOSTS:
        context.load_verify_locations(self_signed(host, certs))
    hosts_map = tmp_path / "hosts.map"
    hosts_map.write_text(f"{HOSTS[0]} ai-upstream\n{HOSTS[1]} openwebui\n")
    second_upstream = free_port()
    gw = Gateway(tmp_path, haproxy_extra_env={
        "HOSTS_MAP": str(hosts_map), "OPENWEBUI_ADDR": f"127.0.0.1:{second_upstream}"})
    tls_port = gw.use_tls(certs)
    try:
        gw.start_redis()
        gw.start_upstream()
        gw.start_upstream("upstream-2", second_upstream)
        gw.start_agent(EXAMPLE_CONFIG)
        gw.start_haproxy(haproxy)
        yield gw, context, tls_port
    finally:
        gw.stop()


def answered_by(gw: Gateway) -> dict[str, int]:
    """2xx answers per AI backend, from HAProxy's stats."""
    counts = {}
    lines = stats(gw).splitlines()
    columns = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(columns, line.split(","), strict=False))
        if row.get("svname") == "BACKEND" and row["pxname"] in ("ai-upstream", "openwebui"):
            counts[row["pxname"]] = int(row["hrsp_2xx"] or 0)
    return counts


def test_sni_picks_the_certificate_and_the_map_the_upstream(
        tls_gw: tuple[Gateway, ssl.SSLContext, int]) -> None:
    gw, context, port = tls_gw
    key = str(create_key(gw, "--name", "tls")["token"])
    for host, backend in zip(HOSTS, ("ai-upstream", "openwebui"), strict=True):
        before = answered_by(gw)
        conn = SniConnection(host, port, context)
        try:
            conn.request("GET", "/v1/models", headers=bearer(key))
            answer = conn.getresponse()
            answer.read()
            # Verified against this host's certificate only: SNI chose it.
            assert conn.sock.getpeercert()["subject"] == ((("commonName", host),),)  # type: ignore[union-attr]
        finally:
            conn.close()
        assert answer.status == 200, host
        assert answer.getheader("strict-transport-security") == "max-age=31536000"
        assert "authorization" not in answer.getheader("x-upstream-saw", "").split(",")
        # HAProxy counts an answer once its stream ends, which may come a
        # moment after the client has read it all.
        deadline = time.monotonic() + 2
        while (after := answered_by(gw))[backend] == before[backend] \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert after[backend] == before[backend] + 1, (host, before, after)


def test_plain_http_redirects_to_https_once_tls_is_on(
        tls_gw: tuple[Gateway, ssl.SSLContext, int]) -> None:
    gw, _, _ = tls_gw
    status, headers, _ = request(gw, "GET", "/v1/models", {"Host": HOSTS[0]})
    assert status == 308
    assert headers["location"] == f"https://{HOSTS[0]}/v1/models"


def test_websocket_upgrade_passes_through(haproxy: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + OWN_LOGIN_ROUTE)
    gw = Gateway(tmp_path)
    try:
        gw.start_redis()
        gw.start_upstream()
        gw.start_agent(config)
        gw.start_haproxy(haproxy)
        with socket.create_connection(("127.0.0.1", gw.gateway_port), timeout=5) as sock:
            status, headers, key = ws_upgrade(sock, "/ws/socket.io/?EIO=4&transport=websocket",
                                              {"Host": "chat.example.com"})
            assert status.startswith("HTTP/1.1 101"), status
            assert headers["sec-websocket-accept"] == websocket_accept(key)
            for text in (b"hello", b"through the tunnel"):
                ws_send(sock, 0x1, text)
                assert ws_recv(sock) == (0x1, text)
    finally:
        gw.stop()
