"""`spoa-agent doctor` against a real deployment: Redis, the demo upstream,
the agent, HAProxy 2.6 with TLS, and a fail2ban-server with the shipped
jail, described by a systemd drop-in written for them. The whole stack
passes; then one fault at a time is made, named by doctor, and undone."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoa_agent.cli.main import cli
from spoa_agent.demo.stack import Gateway, free_port, haproxy_binaries, haproxy_root
from spoa_agent.install.doctor import (
    ALL_CHECKS,
    Check,
    GatewayUrl,
    Probe,
    agent_check,
    redis_checks,
    run_probes,
    tls_check,
)
from spoa_agent.install.shipped import HAPROXY_CFG
from spoa_agent.store.redis import sync_client
from tests.certs import Ca
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer
from tests.e2e.conftest import create_key
from tests.fail2ban.helpers import FAIL2BAN_CLIENT, fail2ban_client, fail2ban_config

# Allowed for a key by no preset; a route of this is the policy fault.
PULL_ROUTE = '\n[[routes]]\nname = "pull"\npath = "/api/pull"\nmethods = ["POST"]\n'


def certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, valid 90 days, in HAProxy's
    PEM layout (certificate then key); also the CA doctor trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o700)
    pem = directory / "gateway.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return pem


def start_fail2ban(confdir: Path, gw: Gateway) -> None:
    """The shipped jail on this stack. Its ignoreip (loopback) stays: doctor's
    requests without a key must not get the tests' own address banned."""
    fail2ban_client(fail2ban_config(confdir, gw), "start")


def write_dropin(path: Path, gw: Gateway) -> Path:
    """HAProxy's drop-in as setup writes it, naming this stack's addresses and paths."""
    env = {"CONFIG": str(HAPROXY_CFG), **gw.haproxy_env()}
    path.write_text("[Service]\n" f"WorkingDirectory={haproxy_root(HAPROXY_CFG)}\n"
                    + "".join(f'Environment="{name}={value}"\n' for name, value in env.items()))
    return path


@dataclass
class Deployment:
    gw: Gateway
    haproxy: str
    agent_config: Path
    dropin: Path
    agent_env: Path
    fail2ban: Path  # fail2ban's config dir
    certs: Path
    tls_port: int
    key: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def args(self, *extra: str, upstream_port: int | None = None) -> list[str]:
        """Every path and address by flag; the upstream's port a closed one
        unless a test says otherwise (the demo upstream is on 127.0.0.1, the
        host of --url)."""
        return ["doctor", "--config", str(self.agent_config), "--agent-env", str(self.agent_env),
                "--haproxy-dropin", str(self.dropin), "--haproxy-config", str(HAPROXY_CFG),
                "--haproxy-socket", str(self.gw.stats_socket), "--haproxy", self.haproxy,
                "--fail2ban-socket", str(self.fail2ban / "fail2ban.sock"),
                "--banlist", str(self.gw.banlist), "--url", self.url,
                "--cacert", str(self.certs / "gateway.pem"),
                "--upstream-port", str(upstream_port or free_port()), *extra]

    def doctor(self, *extra: str, upstream_port: int | None = None,
               key_stdin: bool = False) -> Result:
        args = self.args(*extra, upstream_port=upstream_port)
        if key_stdin:
            return CliRunner().invoke(cli, [*args, "--key-stdin"], input=self.key + "\n")
        return CliRunner().invoke(cli, args, env={"SPOA_AGENT_DOCTOR_KEY": self.key})

    def checks(self, *extra: str, upstream_port: int | None = None) -> dict[str, Check]:
        result = self.doctor("--format", "json", *extra, upstream_port=upstream_port)
        found = parse(result.output)
        assert result.exit_code == (0 if all(c.ok for c in found.values()) else 1)
        return found

    def backend_up(self) -> bool:
        return self.checks("--url-only", "--skip", "upstream-exposed")["key"].ok


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    haproxy = haproxy_binaries().get("2.6")
    if haproxy is None:
        pytest.fail("Debian's HAProxy 2.6 is not installed (run `make test`)")
    tmp = tmp_path_factory.mktemp("doctor")
    certs, tls_port = tmp / "certs", free_port()
    certificate(certs)
    agent_config = tmp / "agent.toml"  # a copy: the policy test edits it and reloads
    shutil.copy(EXAMPLE_CONFIG, agent_config)
    gw = Gateway(tmp / "gw", haproxy_extra_env={
        "TLS_CERT_DIR": str(certs), "GATEWAY_TLS_BIND": f"127.0.0.1:{tls_port}",
        # Each run of doctor sends requests without a key: the module's runs
        # must not add up to HAProxy's auth-flood limit (20 per 10 s).
        "AUTH_FAILURE_LIMIT": "100000"})
    gw.workdir.mkdir()
    confdir = tmp / "fail2ban"
    try:
        gw.start_redis(persistent=True)
        gw.start_upstream(record=False)
        gw.start_agent(agent_config)
        gw.start_haproxy(haproxy)
        start_fail2ban(confdir, gw)
        agent_env = tmp / "env"
        agent_env.write_text(f"SPOA_AGENT_REDIS_URL={gw.redis_url}\n")
        key = str(create_key(gw, "--name", "doctor")["token"])
        deployment = Deployment(gw, haproxy, agent_config, write_dropin(tmp / "spoa-gateway.conf",
                                                                        gw),
                                agent_env, confdir, certs, tls_port, key)
        wait_until(deployment.backend_up, "the gateway never answered with the key")
        yield deployment
    finally:
        if (confdir / "fail2ban.sock").exists():
            subprocess.run([FAIL2BAN_CLIENT, "-c", str(confdir), "stop"], capture_output=True,
                           timeout=30)
        gw.stop()


def parse(output: str) -> dict[str, Check]:
    """doctor's JSON: a list of {"check", "ok", "detail", "fix"}."""
    return {item["check"]: Check(item["check"], item["ok"], item["detail"], item["fix"])
            for item in json.loads(output)}


def failing(checks: dict[str, Check]) -> set[str]:
    return {name for name, check in checks.items() if not check.ok}


# --- the whole deployment passes ---------------------------------------------


def test_a_sound_deployment_passes_every_check_in_text(deployment: Deployment) -> None:
    result = deployment.doctor(key_stdin=True)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines] == list(ALL_CHECKS)
    assert all(line.startswith("✓ ") for line in lines)
    assert "gateway.test: 89 days left" in result.output
    assert deployment.key not in result.output


def test_a_sound_deployment_passes_every_check_in_json(deployment: Deployment) -> None:
    result = deployment.doctor("--format", "json")
    assert result.exit_code == 0, result.output
    items: list[dict[str, Any]] = json.loads(result.output)
    assert [item["check"] for item in items] == list(ALL_CHECKS)
    assert all(set(item) == {"check", "ok", "detail", "fix"} and item["ok"] for item in items)
    assert deployment.key not in result.output


# --- one fault at a time -----------------------------------------------------


def test_agent_stopped(deployment: Deployment) -> None:
    gw = deployment.gw
    gw.processes.pop("agent").stop()
    try:
        checks = deployment.checks()
        assert not checks["agent"].ok
        assert "refused" in checks["agent"].detail.lower()
        assert "systemctl restart spoa-agent" in checks["agent"].fix
        # Nor does anything take HAProxy's usage records.
        assert not checks["usage"].ok and "USAGE_ADDR" in checks["usage"].fix
        # What does not need the agent still passes.
        for name in ("config", "haproxy-config", "redis", "redis-persistence", "fail2ban",
                     "fail2ban-banlist", "tls", "upstream-exposed"):
            assert checks[name].ok, checks[name]
        # HAProxy marks the agent down once its checks (or a request) fail.
        wait_until(lambda: not deployment.checks("--skip", "no-key", "--skip", "blocked",
                                                 "--skip", "key")["haproxy-backend"].ok,
                   "HAProxy never marked the agent down")
        # Without a decision HAProxy answers 503, or (2.6) holds the request
        # until SPOE's timeout: either way the fix points at the agent.
        outside = deployment.checks("--url-only", "--skip", "upstream-exposed")
        assert not outside["no-key"].ok
        assert "agent and haproxy-backend checks" in outside["no-key"].fix
    finally:
        gw.start_agent(deployment.agent_config)
        wait_until(deployment.backend_up, "the agent never came back")


def test_redis_without_persistence(deployment: Deployment) -> None:
    redis = sync_client(deployment.gw.redis_url)
    redis.config_set("save", "")
    redis.config_set("appendonly", "no")
    try:
        checks = deployment.checks()
        assert failing(checks) == {"redis-persistence"}
        assert "lost when Redis restarts" in checks["redis-persistence"].detail
        assert "appendonly yes" in checks["redis-persistence"].fix
        # What `spoa-agent setup` calls says the same.
        assert not {c.name: c for c in redis_checks(deployment.gw.redis_url, None)}[
            "redis-persistence"].ok
    finally:
        redis.config_set("appendonly", "yes")
        redis.close()


def test_redis_that_evicts_keys(deployment: Deployment) -> None:
    redis = sync_client(deployment.gw.redis_url)
    redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        checks = deployment.checks()
        assert failing(checks) == {"redis-eviction"}
        assert checks["redis-eviction"].fix == "redis-cli CONFIG SET maxmemory-policy noeviction"
    finally:
        redis.config_set("maxmemory-policy", "noeviction")
        redis.close()


def test_upstream_reachable_directly(deployment: Deployment) -> None:
    checks = deployment.checks(upstream_port=deployment.gw.upstream_port)
    assert failing(checks) == {"upstream-exposed"}
    assert "bind it to 127.0.0.1" in checks["upstream-exposed"].fix


def test_a_policy_that_lets_model_pulls_through(deployment: Deployment) -> None:
    gw, path = deployment.gw, deployment.agent_config

    gateway = GatewayUrl(deployment.url, str(deployment.certs / "gateway.pem"))

    def pull_status() -> int:
        return gateway.request("POST", "/api/pull", bearer(deployment.key))[0]

    original = path.read_text()
    path.write_text(original + PULL_ROUTE)
    gw.processes["agent"].popen.send_signal(signal.SIGHUP)
    try:
        wait_until(lambda: pull_status() != 403, "the agent never reloaded the policy")
        checks = deployment.checks()
        assert failing(checks) == {"blocked"}
        assert "/api/pull " in checks["blocked"].detail
        assert "/api/pull" in checks["blocked"].fix
    finally:
        path.write_text(original)
        gw.processes["agent"].popen.send_signal(signal.SIGHUP)
        wait_until(lambda: pull_status() == 403, "the agent never reloaded the policy back")


def test_fail2ban_bans_into_another_list(deployment: Deployment) -> None:
    elsewhere = str(deployment.gw.workdir / "elsewhere.lst")
    fail2ban_client(deployment.fail2ban, "set", "spoa-agent", "action", "haproxy-spoa",
                    "banlist", elsewhere)
    try:
        checks = deployment.checks()
        assert failing(checks) == {"fail2ban-banlist"}
        assert elsewhere in checks["fail2ban-banlist"].detail
        assert str(deployment.gw.banlist) in checks["fail2ban-banlist"].detail
        assert f"banlist={deployment.gw.banlist}" in checks["fail2ban-banlist"].fix
    finally:
        fail2ban_client(deployment.fail2ban, "set", "spoa-agent", "action", "haproxy-spoa",
                        "banlist", str(deployment.gw.banlist))


def test_without_tls(deployment: Deployment, tmp_path: Path) -> None:
    text = deployment.dropin.read_text()
    plain = tmp_path / "plain.conf"
    plain.write_text("".join(line + "\n" for line in text.splitlines()
                             if "TLS_CERT_DIR" not in line))
    args = deployment.args("--format", "json")
    args[args.index(str(deployment.dropin))] = str(plain)
    result = CliRunner().invoke(cli, args)
    checks = parse(result.output)
    assert result.exit_code == 1
    assert failing(checks) == {"tls"}
    assert "API keys cross the network in clear" in checks["tls"].detail


def test_skip_and_usage_errors(deployment: Deployment) -> None:
    checks = deployment.checks("--skip", "redis", "--skip", "fail2ban")
    assert not any(name.startswith(("redis", "fail2ban")) for name in checks)
    assert CliRunner().invoke(cli, deployment.args("--skip", "nonsense")).exit_code == 2
    assert CliRunner().invoke(cli, ["doctor", "--key-stdin"]).exit_code == 2


def test_an_untrusted_certificate_is_named(deployment: Deployment) -> None:
    args = deployment.args("--format", "json", "--url-only")
    cacert = args.index("--cacert")
    del args[cacert:cacert + 2]
    result = CliRunner().invoke(cli, args, env={"SPOA_AGENT_DOCTOR_KEY": deployment.key})
    checks = parse(result.output)
    assert result.exit_code == 1
    assert failing(checks) == {"no-key", "blocked", "key"}
    assert "self-signed certificate" in checks["no-key"].detail
    assert "--cacert" in checks["no-key"].fix


def test_the_global_config_option_is_the_default(deployment: Deployment) -> None:
    args = deployment.args("--format", "json")
    del args[args.index("--config"):args.index("--config") + 2]
    result = CliRunner().invoke(cli, ["--config", str(deployment.gw.workdir / "missing.toml"),
                                      *args])
    config = parse(result.output)["config"]
    assert not config.ok and "missing.toml" in config.detail


# --- a check that fails or hangs is a failed check ---------------------------


def test_a_check_that_raises_or_hangs_is_a_failed_check() -> None:
    def broken() -> Check:
        raise RuntimeError("boom")

    def hangs() -> Check:
        time.sleep(30)
        raise AssertionError("never gets here")

    started = time.monotonic()
    checks = run_probes([Probe(("broken",), broken), Probe(("hangs",), hangs, "look at it"),
                         Probe(("fine",), lambda: Check("fine", True, "ok"))], timeout=0.5)
    assert time.monotonic() - started < 2
    assert [(c.name, c.ok) for c in checks] == [("broken", False), ("hangs", False),
                                                ("fine", True)]
    assert "RuntimeError: boom" in checks[0].detail
    assert checks[1] == Check("hangs", False, "no answer within 0.5 s", "look at it")


def test_tls_certificates_close_to_their_end(tmp_path: Path) -> None:
    pem = certificate(tmp_path / "certs")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=80)
    check = tls_check(str(pem.parent), now=soon)
    assert not check.ok and "gateway.test (gateway.pem) expires in 9 days" in check.detail
    (pem.parent / "broken.pem").write_text("not a certificate\n")
    assert "broken.pem: not a PEM certificate" in tls_check(str(pem.parent)).detail


def test_tls_checks_the_device_ca_when_set(tmp_path: Path) -> None:
    pem = certificate(tmp_path / "certs")
    ca = Ca(tmp_path / "device-ca")
    check = tls_check(str(pem.parent), client_ca=str(ca.path))
    assert check.ok and "device certificates signed by CN=Test Device CA" in check.detail
    for path, says in [(ca.issue("laptop").cert, "is no CA certificate"),
                       (tmp_path / "missing.pem", "not a PEM certificate")]:
        check = tls_check(str(pem.parent), client_ca=str(path))
        assert not check.ok and says in check.detail and "TLS_CLIENT_CA" in check.fix


def test_redis_unreachable_or_misnamed() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    checks = {check.name: check for check in redis_checks(url, None)}
    assert not checks["redis"].ok and "refused" in checks["redis"].detail.lower()
    assert checks["redis-clock"].detail == "not checked: Redis is unreachable"
    assert all(not check.ok for check in redis_checks("http://nowhere", None))


def test_something_else_on_the_agents_port(deployment: Deployment) -> None:
    check = agent_check(f"127.0.0.1:{deployment.gw.upstream_port}")  # an HTTP server
    assert not check.ok and "sent no AGENT-HELLO" in check.detail
    assert "ss -ltnp" in check.fix
