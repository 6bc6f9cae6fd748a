"""fail2ban-regex with the project's filter, as tests use it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from spoa_agent.demo.stack import Gateway
from spoa_agent.install.shipped import FAIL2BAN

REPO = Path(__file__).resolve().parents[2]
FILTER = FAIL2BAN / "filter.d" / "spoa-agent.conf"
SAMPLES = REPO / "tests" / "fail2ban" / "logs" / "spoa-agent"
FAIL2BAN_REGEX = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"


def banned_addresses(log: str | Path, filter_spec: str = str(FILTER)) -> list[str]:
    """The address fail2ban reads from each matching line of `log` (a file, or one line)."""
    result = subprocess.run([FAIL2BAN_REGEX, "-o", "ip", str(log), filter_spec],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


FAIL2BAN_CLIENT = shutil.which("fail2ban-client") or "/usr/bin/fail2ban-client"


def fail2ban_config(confdir: Path, gw: Gateway, jail: str = "") -> Path:
    """The shipped filter, action and jail in a config dir of their own, with
    this gateway's log, ban list and socket; `jail` adds settings to the jail."""
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
        f"logpath = {gw.processes['agent'].log_path}\nbackend = polling\n{jail}"
        f"action = haproxy-spoa[banlist={gw.banlist}, socket={gw.stats_socket}]\n")
    return confdir


def fail2ban_client(confdir: Path, *args: str) -> str:
    result = subprocess.run([FAIL2BAN_CLIENT, "-c", str(confdir), *args], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
