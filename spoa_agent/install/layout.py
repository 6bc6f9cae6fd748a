"""Where `spoa-agent setup` puts things on a Debian/Ubuntu host with systemd,
and so where `spoa-agent doctor` looks for them by default. Each path is
absolute; setup --root DIR puts the same tree under DIR."""

from __future__ import annotations

import shlex
from pathlib import Path

AGENT_USER = "spoa-agent"
HAPROXY_USER = "haproxy"  # Debian's haproxy package creates it

CONFIG_DIR = Path("/etc/spoa-agent")
AGENT_CONFIG = CONFIG_DIR / "agent.toml"
AGENT_ENV = CONFIG_DIR / "env"  # secrets: SPOA_AGENT_REDIS_URL, SPOA_AGENT_REDIS_PASSWORD

# HAProxy runs the gateway's config from here (the drop-in's WorkingDirectory).
GATEWAY_DIR = Path("/etc/haproxy/spoa-gateway")
GATEWAY_CFG = GATEWAY_DIR / "haproxy" / "haproxy.cfg"
GATEWAY_CERTS = GATEWAY_DIR / "certs"
# The operator's own frontends and backends, loaded after the gateway's config.
GATEWAY_LOCAL = GATEWAY_DIR / "local.d"
BANLIST = Path("/var/lib/haproxy/spoa-banned.lst")
HAPROXY_SOCKET = Path("/run/haproxy/spoa-gateway.sock")

SYSTEMD_DIR = Path("/etc/systemd/system")
AGENT_UNIT = SYSTEMD_DIR / "spoa-agent.service"
HAPROXY_DROPIN = SYSTEMD_DIR / "haproxy.service.d" / "spoa-gateway.conf"

FAIL2BAN_DIR = Path("/etc/fail2ban")
FAIL2BAN_JAIL = "spoa-agent"
LOGROTATE = Path("/etc/logrotate.d/spoa-agent")
AGENT_LOG = Path("/var/log/spoa-agent/agent.log")

STATE_DIR = Path("/var/lib/spoa-agent")
MANIFEST = STATE_DIR / "setup.json"  # what setup installed, for uninstall


def under(root: Path, path: Path) -> Path:
    """`path` of a host whose / is `root` (setup --root DIR)."""
    return root / path.relative_to("/")


def dropin_environment(text: str) -> dict[str, str]:
    """The variables a unit's or drop-in's Environment="NAME=value" lines set
    (systemd splits them into words as a shell would)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == "Environment":
            for word in shlex.split(value):
                key, _, val = word.partition("=")
                found[key] = val
    return found
