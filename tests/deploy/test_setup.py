"""`spoa-agent setup` and `uninstall` under a scratch root (--root DIR), and
what they install checked by the tool that reads each file on a host:
systemd-analyze verify, haproxy -c (2.6 and 2.8), fail2ban-client -t and
fail2ban-regex."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spoa_agent.demo.stack import haproxy_binaries
from spoa_agent.install import layout
from spoa_agent.install.installer import digest
from spoa_agent.install.shipped import EXAMPLE_CONFIG, SHIPPED
from tests.deploy.test_examples import (
    debian_haproxy_unit,
    run,
    tool,
    units,  # noqa: F401  (a fixture)
    verify,
    write_self_signed_pem,
)
from tests.fail2ban.helpers import SAMPLES, banned_addresses

AGENT = str(Path(sys.executable).parent / "spoa-agent")

# What setup puts under a fresh root: every file, nothing else.
INSTALLED = {
    "etc/spoa-agent/agent.toml", "etc/spoa-agent/env",
    "etc/haproxy/spoa-gateway/haproxy/haproxy.cfg",
    "etc/haproxy/spoa-gateway/haproxy/spoe-agent.conf",
    "etc/haproxy/spoa-gateway/haproxy/hosts.map",
    "etc/haproxy/spoa-gateway/lua/spoa_deny.lua",
    "etc/haproxy/spoa-gateway/lua/spoa_usage.lua",
    "etc/haproxy/spoa-gateway/lua/spoa_oidc.lua",
    "var/lib/haproxy/spoa-banned.lst",
    "etc/systemd/system/spoa-agent.service",
    "etc/systemd/system/haproxy.service.d/spoa-gateway.conf",
    "etc/fail2ban/filter.d/spoa-agent.conf", "etc/fail2ban/action.d/haproxy-spoa.conf",
    "etc/fail2ban/jail.d/spoa-agent.local",
    "etc/logrotate.d/spoa-agent",
    "var/lib/spoa-agent/setup.json",
}


def spoa_agent(*args: str, stdin: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60,
                          input=stdin, env=env)


def setup(root: Path, *args: str) -> str:
    result = spoa_agent("setup", "--root", str(root), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def uninstall(root: Path, *args: str) -> str:
    result = spoa_agent("uninstall", "--root", str(root), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tree(root: Path) -> dict[str, tuple[int, bytes | None, int]]:
    """Every path under root: its mode, its content (files), its mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(root))] = (stat.st_mode, content, stat.st_mtime_ns)
    return found


def files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A scratch root that already holds an operator's own files, which
    setup and uninstall must leave alone."""
    root = tmp_path / "host"
    (root / "etc" / "haproxy").mkdir(parents=True)
    (root / "etc" / "haproxy" / "haproxy.cfg").write_text("# the operator's own\n")
    (root / "etc" / "fail2ban" / "jail.d").mkdir(parents=True)
    (root / "etc" / "fail2ban" / "jail.d" / "sshd.local").write_text("[sshd]\nenabled = true\n")
    return root


def test_setup_installs_every_file_and_uninstall_leaves_the_root_as_it_was(host: Path) -> None:
    before = tree(host)
    setup(host)
    assert files_of(host) - files_of_snapshot(before) == INSTALLED
    assert (host / "etc/haproxy/haproxy.cfg").read_text() == "# the operator's own\n"
    assert (host / "etc/spoa-agent/agent.toml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert (host / "etc/haproxy/spoa-gateway/certs").is_dir()
    assert (host / "etc/haproxy/spoa-gateway/local.d").is_dir()
    # Secrets and the policy are not for everyone to read.
    assert (host / "etc/spoa-agent/env").stat().st_mode & 0o777 == 0o600
    assert (host / "etc/spoa-agent/agent.toml").stat().st_mode & 0o777 == 0o640
    assert (host / "etc/spoa-agent").stat().st_mode & 0o777 == 0o750
    assert (host / "etc/haproxy/spoa-gateway/certs").stat().st_mode & 0o777 == 0o700
    # The unit runs the spoa-agent setup was run from.
    unit = (host / "etc/systemd/system/spoa-agent.service").read_text()
    assert f"ExecStart={AGENT} serve --config /etc/spoa-agent/agent.toml" in unit

    out = uninstall(host)
    assert "keep" not in out
    after = tree(host)
    assert {p: (m, c) for p, (m, c, _) in after.items()} == \
        {p: (m, c) for p, (m, c, _) in before.items()}


def files_of_snapshot(snapshot: dict[str, tuple[int, bytes | None, int]]) -> set[str]:
    return {path for path, (_, content, _) in snapshot.items() if content is not None}


def test_a_second_setup_changes_nothing(host: Path) -> None:
    setup(host)
    first = tree(host)
    out = setup(host)
    assert first == tree(host)  # contents, modes and mtimes
    steps = [line.split()[0] for line in out.split("next:")[0].splitlines()
             if line.startswith("  ")]
    assert set(steps) <= {"unchanged", "skip"}, out


def test_dry_run_prints_every_file_and_command_and_changes_nothing(host: Path) -> None:
    before = tree(host)
    out = setup(host, "--dry-run")
    assert tree(host) == before
    for name in INSTALLED:
        assert f"/{name}" in out
    for command in ("useradd --system", "systemctl enable spoa-agent.service",
                    "apt-get install -y redis-server"):
        assert command in out


def test_an_edited_config_survives_setup_and_uninstall(host: Path) -> None:
    setup(host)
    config = host / "etc/spoa-agent/agent.toml"
    edited = config.read_text().replace('per_ip = "', 'per_ip = "1/s" # was "')
    config.write_text(edited)
    out = setup(host)
    assert config.read_text() == edited
    assert (host / "etc/spoa-agent/agent.toml.new").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert "agent.toml.new" in out

    out = uninstall(host)
    assert "keep      /etc/spoa-agent/agent.toml" in out
    assert config.read_text() == edited
    assert not (host / "etc/spoa-agent/agent.toml.new").exists()
    assert not (host / "var/lib/spoa-agent").exists()


def test_uninstall_keeps_bans_until_purge(host: Path) -> None:
    setup(host)
    banlist = host / "var/lib/haproxy/spoa-banned.lst"
    banlist.write_text(banlist.read_text() + "192.0.2.66\n")
    uninstall(host, "--dry-run")
    assert banlist.exists()
    uninstall(host)
    assert "192.0.2.66" in banlist.read_text()
    # Setup again picks the bans up as they are; --purge then removes them.
    setup(host)
    assert "192.0.2.66" in banlist.read_text()
    uninstall(host, "--purge")
    assert not banlist.exists()
    assert files_of(host) == {"etc/haproxy/haproxy.cfg", "etc/fail2ban/jail.d/sshd.local"}


def test_an_upgrade_replaces_what_setup_wrote_and_nobody_edited(host: Path) -> None:
    """A file as an older version installed it (the record says so) is
    replaced by this version's."""
    setup(host)
    lua = host / "etc/haproxy/spoa-gateway/lua/spoa_deny.lua"
    manifest = host / "var/lib/spoa-agent/setup.json"
    older = b"-- an older spoa_deny.lua\n"
    lua.write_bytes(older)
    record = json.loads(manifest.read_text())
    record["files"]["/etc/haproxy/spoa-gateway/lua/spoa_deny.lua"] = digest(older)
    manifest.write_text(json.dumps(record))
    out = setup(host)
    assert "update    /etc/haproxy/spoa-gateway/lua/spoa_deny.lua" in out
    assert lua.read_bytes() == (SHIPPED / "lua/spoa_deny.lua").read_bytes()
    assert not lua.with_name("spoa_deny.lua.new").exists()


def test_redis_url_and_password_go_to_the_env_file_not_the_arguments(host: Path) -> None:
    result = spoa_agent("setup", "--root", str(host), "--redis-url",
                        "redis://:hunter2@10.0.0.5:6379/0")
    assert result.returncode == 2
    assert "--redis-password-stdin" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr

    result = spoa_agent("setup", "--root", str(host), "--redis-url", "redis://10.0.0.5:6379/1",
                        "--redis-password-stdin", stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    env = (host / "etc/spoa-agent/env").read_text()
    assert "SPOA_AGENT_REDIS_URL=redis://10.0.0.5:6379/1\n" in env
    assert "SPOA_AGENT_REDIS_PASSWORD=s3cret\n" in env
    assert "s3cret" not in result.stdout
    assert "apt-get install" not in result.stdout  # a Redis was given


def test_a_bad_redis_url_is_refused(host: Path) -> None:
    result = spoa_agent("setup", "--root", str(host), "--redis-url", "http://10.0.0.5")
    assert result.returncode == 2
    assert "unknown Redis URL scheme" in result.stderr
    assert not (host / "etc/spoa-agent").exists()


def test_uninstall_without_a_setup_says_so(host: Path) -> None:
    result = spoa_agent("uninstall", "--root", str(host))
    assert result.returncode == 1
    assert "no setup record" in result.stderr


def test_files_names_the_shipped_files() -> None:
    result = spoa_agent("files", "haproxy")
    assert Path(result.stdout.strip()) == SHIPPED / "haproxy"
    listed = spoa_agent("files", "--list").stdout.split()
    assert str(SHIPPED / "haproxy" / "haproxy.cfg") in listed
    assert str(EXAMPLE_CONFIG) in listed
    assert all(Path(name).is_file() for name in listed)


# --- what setup installed, read by the tools that read it on a host ----------

def test_the_installed_units_pass_systemd_analyze_verify(host: Path, units: Path) -> None:  # noqa: F811
    setup(host)
    agent_unit = host / "etc/systemd/system/spoa-agent.service"
    result = verify(agent_unit)
    assert result.returncode == 0, result.stderr
    shutil.copy(host / "etc/systemd/system/haproxy.service.d/spoa-gateway.conf",
                units / "spoa-gateway.conf")
    (units / "haproxy.service").write_text(debian_haproxy_unit())
    (units / "haproxy.service.d").mkdir()
    shutil.move(units / "spoa-gateway.conf", units / "haproxy.service.d" / "spoa-gateway.conf")
    result = verify(units / "haproxy.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.haproxy
@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_the_installed_haproxy_config_passes_haproxy_c(host: Path, tmp_path: Path,
                                                       version: str) -> None:
    """As Debian's unit runs it with the drop-in: from its WorkingDirectory,
    with its variables and EXTRAOPTS (an operator's section in local.d),
    the host paths moved under the scratch root, TLS on."""
    haproxy = haproxy_binaries().get(version)
    if haproxy is None:
        pytest.fail(f"HAProxy {version} is missing: run make deps")
    setup(host)
    dropin = (host / "etc/systemd/system/haproxy.service.d/spoa-gateway.conf").read_text()
    env = layout.dropin_environment(dropin)
    gateway = host / "etc/haproxy/spoa-gateway"
    write_self_signed_pem(tmp_path / "certs")
    (gateway / "local.d" / "mine.cfg").write_text(
        "backend operators-own\n    server s1 127.0.0.1:9\n")
    (tmp_path / "run").mkdir()
    env.update({"TLS_CERT_DIR": str(tmp_path / "certs"), "HAPROXY_RUN_DIR": str(tmp_path / "run"),
                "HAPROXY_BANLIST": str(layout.under(host, Path(env["HAPROXY_BANLIST"]))),
                "PATH": os.environ["PATH"]})
    extra = [str(layout.under(host, Path(word))) if word.startswith("/etc/") else word
             for word in env.pop("EXTRAOPTS").split() if word not in ("-S",)
             and not word.startswith("/run/")]
    argv = [haproxy, "-c", "-f", str(layout.under(host, Path(env.pop("CONFIG")))), *extra]
    result = run(argv, cwd=gateway, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALERT" not in result.stdout + result.stderr


def test_fail2ban_reads_the_installed_files(host: Path, tmp_path: Path) -> None:
    setup(host)
    installed = host / "etc/fail2ban"
    # fail2ban-client -t: the installed filter, action and jail in a config
    # directory beside fail2ban's own base files, the log path moved here.
    confdir = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", confdir, ignore=shutil.ignore_patterns("*.local"))
    shutil.rmtree(confdir / "jail.d")  # the distribution's jails (sshd) need their logs
    (confdir / "jail.d").mkdir()
    for name in INSTALLED:
        if name.startswith("etc/fail2ban/"):
            shutil.copy(host / name, confdir / name.removeprefix("etc/fail2ban/"))
    log = tmp_path / "agent.log"
    log.touch()
    (confdir / "jail.d" / "zz-test.local").write_text(f"[spoa-agent]\nlogpath = {log}\n")
    result = run([tool("fail2ban-client"), "-c", str(confdir), "-t"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: configuration test is successful" in result.stdout + result.stderr

    # The jail's action bans into the very list HAProxy reads.
    jail = (installed / "jail.d/spoa-agent.local").read_text()
    dropin = (host / "etc/systemd/system/haproxy.service.d/spoa-gateway.conf").read_text()
    assert f"banlist={layout.dropin_environment(dropin)['HAPROXY_BANLIST']}," in jail
    # The installed filter finds the sample log's failures.
    found = banned_addresses(SAMPLES, str(installed / "filter.d/spoa-agent.conf"))
    assert found and found == banned_addresses(SAMPLES)


def test_dry_run_on_this_host_names_the_commands_and_changes_nothing() -> None:
    watched = [Path("/etc/spoa-agent"), Path("/var/lib/spoa-agent"),
               Path("/etc/systemd/system/spoa-agent.service")]
    if any(path.exists() for path in watched):
        pytest.skip("spoa-agent is set up on this machine")
    result = spoa_agent("setup", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "run       systemctl enable spoa-agent.service" in result.stdout
    assert "install   /etc/spoa-agent/agent.toml" in result.stdout
    assert not any(path.exists() for path in watched)
