"""The package as an operator gets it: a wheel built from the tracked files,
installed into a fresh venv outside the repository, run from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from spoa_agent.demo.stack import REPO, Gateway, free_port, haproxy_binaries, wait_for_port
from spoa_agent.spop import Ack, SetVar
from tests.peer import HELLO, Peer

pytestmark = pytest.mark.haproxy


def run(argv: list[str], cwd: Path, stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, text=True,
                            timeout=timeout, env=env)
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The venv's bin directory, spoa-agent installed from its wheel."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                 str(base / "dist"), str(source)], cwd=base)
    assert built.returncode == 0, built.stderr
    wheel = next((base / "dist").glob("spoa_agent-*.whl"))
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    assert made.returncode == 0, made.stderr
    done = run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=base)
    assert done.returncode == 0, done.stderr
    yield venv / "bin"


def env_without_checkout() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("SPOA_AGENT_")}


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    code = ("import importlib.util, spoa_agent; print(spoa_agent.__file__); "
            "print(importlib.util.find_spec('spoa_agent.demo') is None)")
    result = run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env_without_checkout())
    where, no_demo = result.stdout.split()
    assert Path(where).is_relative_to(installed.parent), where
    assert no_demo == "True"  # the demo stays in the clone


def test_the_installed_package_runs_its_request_path_compiled(installed: Path,
                                                              tmp_path: Path) -> None:
    # setup.py compiled it while the wheel was built: an operator's host
    # with gcc and python3-dev gets the compiled agent, nothing stale.
    code = "from spoa_agent import native; print(native.pure_modules(), native.stale_modules())"
    result = run([str(installed / "python"), "-c", code], cwd=tmp_path,
                 env=env_without_checkout())
    assert result.stdout.strip() == "[] []", result.stderr


def test_the_installed_files_are_all_there(installed: Path, tmp_path: Path) -> None:
    listed = run([str(installed / "spoa-agent"), "files", "--list"], cwd=tmp_path,
                 env=env_without_checkout()).stdout.split()
    shipped = run([str(installed / "spoa-agent"), "files"], cwd=tmp_path,
                  env=env_without_checkout()).stdout.strip()
    relative = {str(Path(name).relative_to(shipped)) for name in listed}
    assert relative >= {
        "haproxy/haproxy.cfg", "haproxy/spoe-agent.conf", "haproxy/hosts.map",
        "lua/spoa_deny.lua", "lua/spoa_usage.lua", "fail2ban/filter.d/spoa-agent.conf",
        "fail2ban/action.d/haproxy-spoa.conf", "fail2ban/jail.d/spoa-agent.local",
        "systemd/spoa-agent.service", "systemd/haproxy.service.d/spoa-gateway.conf",
        "logrotate/spoa-agent", "agent.example.toml"}
    assert Path(shipped).is_relative_to(installed.parent)


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_haproxy_accepts_the_installed_config(installed: Path, tmp_path: Path,
                                              version: str) -> None:
    haproxy = haproxy_binaries().get(version)
    if haproxy is None:
        pytest.fail(f"HAProxy {version} is missing: run make deps")
    shipped = Path(run([str(installed / "spoa-agent"), "files"], cwd=tmp_path,
                       env=env_without_checkout()).stdout.strip())
    result = run([haproxy, "-c", "-f", "haproxy/haproxy.cfg"], cwd=shipped,
                 env={**env_without_checkout(), "HAPROXY_RUN_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALERT" not in result.stdout + result.stderr


def test_serve_token_create_and_check_from_the_installed_package(installed: Path,
                                                                 tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    gateway.start_redis()
    agent_port = free_port()
    env = {**env_without_checkout(),
           "SPOA_AGENT_REDIS_URL": f"redis://127.0.0.1:{gateway.redis_port}/0"}
    spoa_agent = str(installed / "spoa-agent")
    example = run([spoa_agent, "files"], cwd=tmp_path, env=env).stdout.strip() \
        + "/agent.example.toml"
    try:
        created = run([spoa_agent, "token", "create", "--name", "laptop", "--format", "json"],
                      cwd=tmp_path, env=env)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["token"]

        def check(path: str) -> subprocess.CompletedProcess[str]:
            return run([spoa_agent, "--config", example, "check", "--method", "GET",
                        "--path", path, "--token-stdin"], cwd=tmp_path, stdin=key, env=env)

        allowed, denied = check("/api/tags"), check("/api/pull")
        assert (allowed.returncode, denied.returncode) == (0, 1), allowed.stdout + denied.stdout

        log = tmp_path / "agent.log"
        with log.open("wb") as out:
            server = subprocess.Popen([spoa_agent, "serve", "--config", example, "--listen",
                                       f"127.0.0.1:{agent_port}"], cwd=tmp_path, env=env,
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(agent_port, server)  # type: ignore[arg-type]
            peer = Peer(agent_port)
            peer.hello(HELLO)
            peer.notify(1, ip=IPv4Address("192.0.2.7"), method="GET", path="/api/tags",
                        authorization=f"Bearer {key}")
            ack = peer.read()
            assert isinstance(ack, Ack)
            answer = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
            assert answer.get("status") == 200, answer
        finally:
            server.terminate()
            assert server.wait(timeout=30) == 0, log.read_text()
    finally:
        gateway.stop()
