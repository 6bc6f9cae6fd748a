"""Client-controlled text imitating the log format never makes fail2ban read
another address: the agent's own output through real HAProxy, read by the
project's filter."""

from __future__ import annotations

from pathlib import Path

from spoa_agent.demo.stack import gateway, haproxy_binaries
from tests.conftest import EXAMPLE_CONFIG
from tests.e2e.client import request
from tests.fail2ban.helpers import banned_addresses

FAKE = "203.0.113.9"
FAKE_LINE = ('{"@timestamp":"2026-01-01T00:00:00Z","log.level":"warning",'
             f'"event.action":"auth_failed","source.ip":"{FAKE}"}}')
ATTACKS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", f"/api/pull?source.ip={FAKE}", {}),
    ("GET", f"/x%22,%22source.ip%22:%22{FAKE}%22%7D", {}),
    ("POST", "/api/pull", {"User-Agent": f'","source.ip":"{FAKE}","x":"'}),
    ("GET", "/api/tags", {"User-Agent": FAKE_LINE}),
    ("GET", "/api/tags", {"Authorization": f'Bearer x","source.ip":"{FAKE}"'}),
    ("GET", "/api/tags", {"Authorization": f"Bearer {FAKE_LINE}"}),
    ("GET", "/api/tags", {"x-api-key": f'spoa_"}}\\n{FAKE_LINE}'}),
    ("GET", "/api/tags", {"User-Agent": "\\n" + FAKE_LINE + "\\r\\n"}),
]


def test_only_the_real_client_address_is_ever_read(tmp_path: Path) -> None:
    haproxy = haproxy_binaries()["2.6"]
    with gateway(tmp_path, haproxy, EXAMPLE_CONFIG) as gw:
        statuses = [request(gw, method, path, headers, b"{}" if method == "POST" else None,
                            source="127.0.0.2")[0] for method, path, headers in ATTACKS]
        assert set(statuses) <= {401, 403}, statuses
        log = gw.processes["agent"].log_path
        found = banned_addresses(log)
        assert found == ["127.0.0.2"] * len(ATTACKS)
        assert FAKE in log.read_text()  # the fake text did reach the log, escaped
        # A Host that is no host name never reaches the agent or its log.
        assert request(gw, "GET", "/api/tags", {"Host": f'evil","source.ip":"{FAKE}'},
                       source="127.0.0.2")[0] == 400
        assert banned_addresses(log) == ["127.0.0.2"] * len(ATTACKS)
