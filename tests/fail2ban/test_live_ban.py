"""A real fail2ban-server with the project's filter, jail and action, a real
HAProxy and the agent: a failing client gets banned in HAProxy, others not;
unban lets it back; a reload keeps the ban."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoa_agent.demo.stack import Gateway, gateway, haproxy_binaries
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import bearer, error_message, request
from tests.e2e.conftest import create_key
from tests.fail2ban.helpers import fail2ban_client, fail2ban_config

BAD, GOOD = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def banning(tmp_path: Path) -> Iterator[tuple[Gateway, Path, str]]:
    haproxy = haproxy_binaries()["2.6"]
    with gateway(tmp_path / "gw", haproxy, EXAMPLE_CONFIG) as gw:
        # Quick to ban, and loopback (where the tests connect from) not spared.
        confdir = fail2ban_config(tmp_path / "fail2ban", gw,
                                  jail="maxretry = 3\nfindtime = 10m\nbantime = 10m\nignoreip =\n")
        fail2ban_client(confdir, "start")
        try:
            yield gw, confdir, haproxy
        finally:
            fail2ban_client(confdir, "stop")


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
    wait_until(lambda: BAD in fail2ban_client(confdir, "status", "spoa-agent"), "never banned")
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

    fail2ban_client(confdir, "unban", BAD)
    wait_until(lambda: request(gw, "GET", "/api/tags", bearer(key), source=BAD)[0] == 200,
               "still refused after unban")
    assert gw.banlist.read_text().split() == []
