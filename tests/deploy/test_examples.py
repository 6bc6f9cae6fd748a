"""The deployment files (examples/ and the shipped systemd and logrotate
files under spoa_agent/files/), each read by the tool that
reads it in production: keepalived --config-test, systemd-analyze verify,
logrotate --debug, haproxy -c; the sysctl keys against /proc/sys. Every tool
check also runs on a deliberately broken copy, to show that it can fail."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoa_agent.config import ServerConfig, parse_seconds
from spoa_agent.demo.stack import Gateway, free_port, spawn, wait_for_port
from spoa_agent.install.shipped import FAIL2BAN, HAPROXY_CFG, SHIPPED
from spoa_agent.spop import Ack, SetVar
from tests.certs import Ca
from tests.conftest import EXAMPLE_CONFIG
from tests.peer import Peer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
KEEPALIVED_CONF = EXAMPLES / "keepalived" / "keepalived.conf"
SYSCTL_CONF = EXAMPLES / "sysctl" / "99-haproxy-nonlocal-bind.conf"
AGENT_UNIT = SHIPPED / "systemd" / "spoa-agent.service"
HAPROXY_DROPIN = SHIPPED / "systemd" / "haproxy.service.d" / "spoa-gateway.conf"
OLLAMA_DROPIN = EXAMPLES / "ollama" / "ollama.service.d" / "loopback.conf"
LOGROTATE_CONF = SHIPPED / "logrotate" / "spoa-agent"
DEBIAN_HAPROXY_UNIT = Path("/lib/systemd/system/haproxy.service")
INSTALLED_AGENT = "/opt/spoa-agent/.venv/bin/spoa-agent"


def tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(found, os.X_OK):
        pytest.fail(f"{name} is missing: run scripts/install-system-deps.sh")
    return found


def run(argv: list[str], cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit or drop-in, in order; keys may repeat."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def setting(path: Path, section: str, key: str) -> str:
    """The last value of a key, as systemd uses it for single-valued settings."""
    values = [v for s, k, v in unit_settings(path) if (s, k) == (section, key)]
    assert values, f"{path.name}: no {key}= in [{section}]"
    return values[-1]


def environment(path: Path) -> dict[str, str]:
    """The variables Environment= lines set (quoted "NAME=value" words)."""
    env: dict[str, str] = {}
    for section, key, value in unit_settings(path):
        if (section, key) == ("Service", "Environment"):
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                env[name] = val
    return env


# --- keepalived -------------------------------------------------------------

IFF_LOOPBACK, IFF_MULTICAST = 0x8, 0x1000


def vrrp_interface() -> str:
    """eth0, as in the example, when this host has it; else an interface that
    keepalived accepts for multicast VRRP (it checks that the interface exists)."""
    names = sorted(os.listdir("/sys/class/net"))
    if "eth0" in names:
        return "eth0"
    for name in names:
        flags = int((Path("/sys/class/net") / name / "flags").read_text(), 16)
        if flags & IFF_MULTICAST and not flags & IFF_LOOPBACK:
            return name
    pytest.skip("no multicast-capable network interface to check a VRRP instance against")


def keepalived_test(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("keepalived --config-test checks script security only as root, "
                    "the way the daemon runs")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text.replace("eth0", vrrp_interface()))
    return run([tool("keepalived"), "--config-test", "-f", str(conf)])


def node_b(text: str) -> str:
    """Node B's copy: each setting marked `! node B: VALUE` takes that value."""
    lines = []
    for line in text.splitlines():
        code, mark, value = line.partition("! node B:")
        if mark and code.strip() and not code.lstrip().startswith("!"):
            indent = code[:len(code) - len(code.lstrip())]
            line = f"{indent}{code.split()[0]} {value.strip()}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def with_unicast_and_nopreempt(text: str) -> str:
    """The variant the comments describe: unicast peers, nopreempt, both BACKUP,
    and the check tracked with weight 0."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"! (unicast_src_ip .*|unicast_peer \{|\s*192\.0\.2\.12 .*|\}|nopreempt)",
                        stripped):
            line = line.replace("! ", "", 1)
        elif stripped.startswith("state MASTER"):
            line = line.replace("state MASTER", "state BACKUP")
        elif stripped.startswith("chk_haproxy ") and "weight 0" in stripped:
            line = line.split("!")[0].rstrip() + " weight 0"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("variant", ["node A", "node B", "unicast + nopreempt"])
def test_keepalived_accepts_the_example(variant: str, tmp_path: Path) -> None:
    text = KEEPALIVED_CONF.read_text()
    if variant == "node B":
        text = node_b(text)
        assert "state BACKUP" in text and "priority 100" in text
    elif variant == "unicast + nopreempt":
        text = with_unicast_and_nopreempt(text)
        assert "\n    nopreempt" in text and "\n    unicast_peer {" in text
        assert "chk_haproxy weight 0" in text
    result = keepalived_test(text, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(("good", "bad"), [
    ("virtual_router_id 51", "virtual_router_id 256"),
    ("priority 110", "priority 300"),
    ("advert_int 1", "advert_interval 1"),
    ('"/usr/bin/pidof haproxy"', '"/usr/bin/no-such-check haproxy"'),
    ("auth_pass Ch4ngeMe", "auth_pass Ch4ngeMeTooLong"),  # VRRPv2 keeps 8 characters
])
def test_keepalived_refuses_a_broken_copy(good: str, bad: str, tmp_path: Path) -> None:
    text = KEEPALIVED_CONF.read_text()
    assert good in text
    result = keepalived_test(text.replace(good, bad), tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip()


def number(setting: str, text: str) -> int:
    found = re.search(rf"^\s*{setting} (-?\d+)", text, re.M)
    assert found, setting
    return int(found.group(1))


def test_keepalived_failover_arithmetic() -> None:
    """A node whose HAProxy died must rank below a healthy peer."""
    text = KEEPALIVED_CONF.read_text()
    a, b = number("priority", text), number("priority", node_b(text))
    weight = number("weight", text)
    assert weight < 0 and a > b
    assert a + weight < b
    assert re.search(r"vrrp_script chk_haproxy \{\s*script \"/usr/bin/(pidof|killall -0) haproxy\"",
                     text)
    assert re.search(r"track_script \{\s*chk_haproxy", text)
    assert re.search(r"virtual_ipaddress \{\s*192\.0\.2\.10/24 dev eth0", text)
    assert "ip_nonlocal_bind=1" in text


# --- sysctl -----------------------------------------------------------------

def sysctl_settings(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and line[0] not in "#;":
            key, _, value = line.partition("=")
            out[key.strip().lstrip("-")] = value.strip()
    return out


def unknown_sysctl_keys(settings: dict[str, str]) -> list[str]:
    return [key for key in settings
            if not (Path("/proc/sys") / key.replace(".", "/")).is_file()]


def test_sysctl_keys_exist_and_are_on() -> None:
    settings = sysctl_settings(SYSCTL_CONF.read_text())
    assert settings == {"net.ipv4.ip_nonlocal_bind": "1", "net.ipv6.ip_nonlocal_bind": "1"}
    assert unknown_sysctl_keys(settings) == []


def test_sysctl_check_catches_a_misspelt_key() -> None:
    text = SYSCTL_CONF.read_text().replace("ip_nonlocal_bind", "ip_non_local_bind")
    assert len(unknown_sysctl_keys(sysctl_settings(text))) == 2


# --- systemd ----------------------------------------------------------------

def systemd_analyze() -> str:
    return tool("systemd-analyze")


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """A unit directory in which systemd-analyze verify works here at all."""
    directory = tmp_path / "units"
    directory.mkdir()
    probe = directory / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    result = verify(probe)
    if result.returncode != 0 or result.stdout + result.stderr:
        pytest.skip("systemd-analyze verify cannot check even a trivial unit here: "
                    + result.stderr.strip())
    probe.unlink()
    return directory


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return run([systemd_analyze(), "verify", str(unit)],
               env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})


def agent_unit_copy(units: Path, replace: tuple[str, str] | None = None) -> Path:
    """The unit with ExecStart at this checkout's spoa-agent (verify wants it to exist)."""
    binary = Path(sys.executable).parent / "spoa-agent"
    assert binary.exists(), binary
    text = AGENT_UNIT.read_text()
    assert INSTALLED_AGENT in text
    text = text.replace(INSTALLED_AGENT, str(binary))
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    unit = units / "spoa-agent.service"
    unit.write_text(text)
    return unit


def test_systemd_accepts_the_agent_unit(units: Path) -> None:
    result = verify(agent_unit_copy(units))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("broken", [
    ("Restart=on-failure", "Restart=sometimes"),
    ("KillMode=mixed", "KillMode=gentle"),
    ("ProtectSystem=strict", "ProtectSystem=very"),
    ("RestartSec=1s", "RestartSecs=1s"),
])
def test_systemd_complains_about_a_broken_agent_unit(broken: tuple[str, str],
                                                     units: Path) -> None:
    result = verify(agent_unit_copy(units, broken))
    assert "spoa-agent.service" in result.stderr, result.stderr


def test_systemd_refuses_a_missing_binary(units: Path, tmp_path: Path) -> None:
    unit = agent_unit_copy(units, (str(Path(sys.executable).parent / "spoa-agent"),
                                   str(tmp_path / "no-such-binary")))
    result = verify(unit)
    assert result.returncode != 0
    assert "not executable" in result.stderr


def test_agent_unit_settings() -> None:
    def get(key: str, section: str = "Service") -> str:
        return setting(AGENT_UNIT, section, key)

    assert (get("User"), get("Group")) == ("spoa-agent", "spoa-agent")
    assert get("ExecStart") == f"{INSTALLED_AGENT} serve --config /etc/spoa-agent/agent.toml"
    assert get("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert (get("Restart"), get("RestartSec"), get("KillSignal")) == \
        ("on-failure", "1s", "SIGTERM")
    # The agent drains for drain_timeout; --workers waits 2 s more for its workers.
    assert parse_seconds(get("TimeoutStopSec")) > ServerConfig().drain_timeout + 2
    assert get("EnvironmentFile") == "-/etc/spoa-agent/env"
    assert get("StandardOutput") == "journal"
    assert "SPOA_AGENT_LOG_FILE" not in environment(AGENT_UNIT)
    assert set(get("After", "Unit").split()) >= {"network-online.target", "redis-server.service"}
    assert "network-online.target" in get("Wants", "Unit").split()
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "LockPersonality",
                "MemoryDenyWriteExecute"):
        assert get(key) == "yes", key
    assert get("ProtectSystem") == "strict"
    assert get("CapabilityBoundingSet") == ""
    assert set(get("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert get("LimitNOFILE") == "65536"
    assert get("WantedBy", "Install") == "multi-user.target"


# --- MemoryDenyWriteExecute, tried for real ---------------------------------

# Sets the kernel's own W^X rule, prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
# (Linux 6.3+; systemd uses it or an equivalent seccomp filter for
# MemoryDenyWriteExecute=yes), checks that it bites, then execs argv[1:].
MDWE_EXEC = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("PR_SET_MDWE is set, yet a writable and executable mapping was allowed")
os.execv(sys.argv[1], sys.argv[1:])
"""
WX_MAPPING = """
import mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    sys.exit(0)
sys.exit("a writable and executable mapping was allowed")
"""


def under_mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", MDWE_EXEC, *argv]


def test_mdwe_is_inherited_across_exec() -> None:
    """The check below means something only if the rule reaches the exec'd agent."""
    result = run(under_mdwe(sys.executable, "-c", WX_MAPPING))
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0, result.stderr
    assert run([sys.executable, "-c", WX_MAPPING]).returncode != 0  # without it: allowed


def test_agent_works_under_memory_deny_write_execute(redis_gw: Gateway) -> None:
    """argon2 (cffi), orjson, uvloop and two forked workers with W^X enforced."""
    if run(under_mdwe("/bin/true")).returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    created = redis_gw.spoa_agent("token", "create", "--format", "json", "--name", "mdwe")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    port = free_port()
    agent = spawn("agent", under_mdwe(sys.executable, "-m", "spoa_agent",
                                      "--config", str(EXAMPLE_CONFIG), "serve",
                                      "--listen", f"127.0.0.1:{port}", "--workers", "2"),
                  redis_gw.workdir, env={"SPOA_AGENT_REDIS_URL": redis_gw.redis_url})
    redis_gw.processes["agent"] = agent
    wait_for_port(port, agent.popen)
    peer = Peer(port)
    peer.hello()
    for stream, credential in enumerate([token, token[:-1] + ("0" if token[-1] != "0" else "1")]):
        peer.notify(stream + 1, method="GET", path="/api/tags", ip=None,
                    authorization=f"Bearer {credential}")
        ack = peer.read()
        assert isinstance(ack, Ack)
        decision = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
        if stream == 0:
            assert decision["decision"] == "allow" and decision["principal"] == "mdwe", decision
        else:
            assert decision["decision"] != "allow", decision
    assert agent.popen.poll() is None, agent.log()
    assert agent.stop() == 0, agent.log()
    assert '"log.level":"error"' not in agent.log()


# --- HAProxy drop-in --------------------------------------------------------

def test_haproxy_dropin_names_the_config_variables() -> None:
    env = environment(HAPROXY_DROPIN)
    assert set(env) >= {"CONFIG", "EXTRAOPTS", "GATEWAY_BIND", "AGENT_ADDR", "UPSTREAM_ADDR",
                        "HAPROXY_RUN_DIR", "HAPROXY_BANLIST"}
    # TLS waits for the operator's certificate: HAProxy would not start on an
    # empty certificate directory.
    assert '#Environment="TLS_CERT_DIR=' in HAPROXY_DROPIN.read_text()
    config = HAPROXY_CFG.read_text()
    for name in set(env) - {"CONFIG", "EXTRAOPTS"}:
        assert "${" + name in config, f"haproxy.cfg does not read {name}"
    # haproxy.cfg names its files relative to the repository root.
    workdir = setting(HAPROXY_DROPIN, "Service", "WorkingDirectory")
    assert env["CONFIG"] == f"{workdir}/haproxy/haproxy.cfg"
    # fail2ban's action must name the same ban list.
    action = (FAIL2BAN / "jail.d" / "spoa-agent.local").read_text()
    assert f"banlist={env['HAPROXY_BANLIST']}" in action


def write_self_signed_pem(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o700)
    (directory / "gateway.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()))


def dropin_layout(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    """The shipped files laid out as the drop-in's comment says, its variables
    (paths moved into tmp), and the `haproxy -c` that checks them."""
    install = tmp_path / "spoa-gateway"
    for part in ("haproxy", "lua"):
        shutil.copytree(SHIPPED / part, install / part)
    write_self_signed_pem(tmp_path / "certs")
    (tmp_path / "run").mkdir()
    (tmp_path / "banned.lst").touch()
    env = {**environment(HAPROXY_DROPIN), "TLS_CERT_DIR": str(tmp_path / "certs"),
           "HAPROXY_RUN_DIR": str(tmp_path / "run"),
           "HAPROXY_BANLIST": str(tmp_path / "banned.lst"), "PATH": "/usr/sbin:/usr/bin:/bin"}
    return install, env, [tool("haproxy"), "-c", "-f", str(install / "haproxy" / "haproxy.cfg")]


@pytest.mark.haproxy
def test_haproxy_checks_the_config_with_the_dropin_environment(tmp_path: Path) -> None:
    """haproxy -c as Debian's unit runs it: the copy laid out as the drop-in's
    comment says, from its WorkingDirectory, with its variables (paths moved
    into tmp). From / (no WorkingDirectory) the same check fails."""
    install, env, argv = dropin_layout(tmp_path)
    result = run(argv, cwd=install, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALERT" not in result.stdout + result.stderr
    assert run(argv, cwd=Path("/"), env=env).returncode != 0


@pytest.mark.haproxy
def test_device_certificates_are_one_uncommented_line(tmp_path: Path) -> None:
    """TLS_CLIENT_CA, commented out in the drop-in, turns device certificates on
    once uncommented; HAProxy refuses a missing CA file, which is why it waits
    for the operator's CA as TLS_CERT_DIR waits for a certificate."""
    line = next(line for line in HAPROXY_DROPIN.read_text().splitlines()
                if line.startswith('#Environment="TLS_CLIENT_CA='))
    assert line.endswith('/client-ca.pem"')
    install, env, argv = dropin_layout(tmp_path)
    ca = Ca(tmp_path / "device-ca")
    result = run(argv, cwd=install, env={**env, "TLS_CLIENT_CA": str(ca.path)})
    assert result.returncode == 0, result.stdout + result.stderr
    missing = run(argv, cwd=install, env={**env, "TLS_CLIENT_CA": str(tmp_path / "none.pem")})
    assert missing.returncode != 0


def dropin_beside(unit_text: str, unit_name: str, dropin: Path, units: Path,
                  replace: tuple[str, str] | None = None) -> Path:
    """A unit with the drop-in in its .d directory, where verify finds it."""
    unit = units / unit_name
    unit.write_text(unit_text)
    (units / f"{unit_name}.d").mkdir()
    text = dropin.read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    (units / f"{unit_name}.d" / dropin.name).write_text(text)
    return unit


def debian_haproxy_unit() -> str:
    if not DEBIAN_HAPROXY_UNIT.exists():
        pytest.skip(f"{DEBIAN_HAPROXY_UNIT} (Debian's haproxy package) is not installed")
    return DEBIAN_HAPROXY_UNIT.read_text()


def test_systemd_accepts_the_haproxy_dropin(units: Path) -> None:
    unit = dropin_beside(debian_haproxy_unit(), "haproxy.service", HAPROXY_DROPIN, units)
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_systemd_complains_about_a_broken_haproxy_dropin(units: Path) -> None:
    unit = dropin_beside(debian_haproxy_unit(), "haproxy.service", HAPROXY_DROPIN, units,
                         ("WorkingDirectory=", "WorkDirectory="))
    assert "spoa-gateway.conf" in verify(unit).stderr


# --- Ollama drop-in ---------------------------------------------------------

# Enough of the unit Ollama's installer writes for the drop-in to attach to.
OLLAMA_UNIT = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/bin/true
Restart=always

[Install]
WantedBy=default.target
"""


def ollama_host(path: Path) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = environment(path)["OLLAMA_HOST"].removeprefix("http://").rsplit(":", 1)[0]
    return ipaddress.ip_address(host.strip("[]"))


def test_ollama_listens_on_loopback_only() -> None:
    assert ollama_host(OLLAMA_DROPIN).is_loopback
    assert environment(OLLAMA_DROPIN)["OLLAMA_HOST"] == "127.0.0.1:11434"


def test_ollama_check_catches_a_public_bind(tmp_path: Path) -> None:
    broken = tmp_path / "loopback.conf"
    broken.write_text(OLLAMA_DROPIN.read_text().replace('"OLLAMA_HOST=127.0.0.1:',
                                                        '"OLLAMA_HOST=0.0.0.0:'))
    assert not ollama_host(broken).is_loopback


def test_systemd_accepts_the_ollama_dropin(units: Path) -> None:
    result = verify(dropin_beside(OLLAMA_UNIT, "ollama.service", OLLAMA_DROPIN, units))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


# --- logrotate --------------------------------------------------------------

def logrotate_debug(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A forced dry run (--debug changes nothing) on a copy for a log in tmp."""
    log = tmp_path / "agent.log"
    log.write_text('{"event.action":"agent_listening"}\n')
    conf = tmp_path / "spoa-agent"
    assert "/var/log/spoa-agent/agent.log" in text
    conf.write_text(text.replace("/var/log/spoa-agent/agent.log", str(log)))
    conf.chmod(0o644)  # logrotate ignores group- or world-writable configs
    return run([tool("logrotate"), "--debug", "--force", "--state", str(tmp_path / "state"),
                str(conf)])


def test_logrotate_accepts_the_example(tmp_path: Path) -> None:
    result = logrotate_debug(LOGROTATE_CONF.read_text(), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error:" not in output, output
    assert f"rotating pattern: {tmp_path / 'agent.log'}" in output
    assert "14 rotations" in output
    assert "running postrotate script" in output
    assert "systemctl kill --kill-whom=main -s USR1 spoa-agent.service" in output
    assert (tmp_path / "agent.log").exists() and not (tmp_path / "agent.log.1").exists()


@pytest.mark.parametrize("broken", [("rotate 14", "rotate fourteen"),
                                    ("delaycompress", "delaycompres"),
                                    ("    endscript\n", "")])
def test_logrotate_complains_about_a_broken_copy(broken: tuple[str, str], tmp_path: Path) -> None:
    text = LOGROTATE_CONF.read_text()
    assert broken[0] in text
    result = logrotate_debug(text.replace(*broken), tmp_path)
    assert "error:" in result.stdout + result.stderr


def test_logrotate_settings() -> None:
    text = LOGROTATE_CONF.read_text()
    body = re.sub(r"#.*", "", text)
    for directive in ("daily", "rotate 14", "compress", "delaycompress", "missingok",
                      "notifempty", "postrotate", "endscript"):
        assert re.search(rf"^\s*{directive}\s*$", body, re.M), directive
    assert not re.search(r"^\s*copytruncate", body, re.M)  # only as the commented alternative
    assert "# copytruncate" in text
