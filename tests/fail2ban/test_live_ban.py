"""A real fail2ban-server with the project's filter, jail and action, a real
HAProxy and the agent: a failing client gets banned in HAProxy, others not;
unban lets it back; a reload keeps the ban."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, gateway, haproxy_binaries
from spoa_agent.install.shipped import FAIL2BAN
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key

CLIENT = shutil.which("fail2ban-client") or "/usr/bin/fail2ban-client"
BAD, GOOD = "127.0.0.2", "127.0.0.3"


def fail2ban_config(confdir: Path, gw: Gateway) -> Path:
    """The shipped filter, action and jail in a config dir of their own, with
    this gateway's paths and a small maxretry."""
    for sub in ("filter.d", "action.d", "jail.d"):
        (confdir / sub).mkdir(parents=True)
    shutil.copy(FAIL2BAN / "filter.d" / "spoa-agent.conf", confdir / "filter.d")
    shutil.copy(FAIL2BAN / "action.d" / "haproxy-spoa.conf", confdir / "action.d")
    shutil.copy(FAIL2BAN / "jail.d" / "spoa-agent.local", confdir / "jail.d")
    (confdir / "fail2ban.conf").write_text(
        "[Definition]\nloglevel = INFO\n"
        f"logtarget = {confdir}/fail2ban.log\nsocket = {confdir}/fail2ban.sock\n"
        f"pidfile = {confdir}/fail2ban.pid\ndbfile = :memory:\n")
    (confdir / "jail.conf").write_text("[DEFAULT]\nbackend = polling\n")
    (confdir / "jail.d" / "zz-test.local").write_text(
        "[spoa-agent]\n"
        f"logpath = {gw.processes['agent'].log_path}\n"
        "backend = polling\nmaxretry = 3\nfindtime = 10m\nbantime = 10m\nignoreip =\n"
        f"action = haproxy-spoa[banlist={gw.banlist}, socket={gw.stats_socket}]\n")
    return confdir


def client(confdir: Path, *args: str) -> str:
    result = subprocess.run([CLIENT, "-c", str(confdir), *args], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def banning(tmp_path: Path) -> Iterator[tuple[Gateway, Path, str]]:
    haproxy = haproxy_binaries()["2.6"]
    with gateway(tmp_path / "gw", haproxy, EXAMPLE_CONFIG) as gw:
        confdir = fail2ban_config(tmp_path / "fail2ban", gw)
        client(confdir, "start")
        try:
            yield gw, confdir, haproxy
        finally:
            client(confdir, "stop")


def wait_until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_ban_unban_and_reload(banning: tuple[Gateway, Path, str]) -> None:
    gw, confdir, haproxy = banning
    key = str(create_key(gw, "--name", "good")["token"])
    assert request(gw, "GET", "/api/tags", bearer(key), source=BAD)[0] == 200
    for _ in range(3):
        assert request(gw, "GET", "/api/tags", source=BAD)[0] == 401  # no key
    wait_until(lambda: BAD in client(confdir, "status", "spoa-agent"), "never banned")
    wait_until(lambda: request(gw, "GET", "/api/tags", bearer(key), source=BAD)[0] == 403,
               "HAProxy does not refuse the banned address")
    assert request(gw, "GET", "/api/tags", bearer(key), source=GOOD)[0] == 200
    assert gw.banlist.read_text().split() == [BAD]

    status, _, body = request(gw, "GET", "/api/tags", bearer(key), source=BAD)
    assert (status, error_message(body)) == (403, "this address is blocked for a while after "
                                                  "repeated failed requests; try again later")

    gw.reload_haproxy(haproxy)
    assert request(gw, "GET", "/api/tags", bearer(key), source=BAD)[0] == 403
    assert request(gw, "GET", "/api/tags", bearer(key), source=GOOD)[0] == 200

    client(confdir, "unban", BAD)
    wait_until(lambda: request(gw, "GET", "/api/tags", bearer(key), source=BAD)[0] == 200,
               "still refused after unban")
    assert gw.banlist.read_text().split() == []
