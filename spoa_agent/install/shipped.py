"""The files the package ships beside its code: HAProxy's config, SPOE file
and Lua, fail2ban's filter, action and jail, the systemd units, logrotate's
file and the example agent config. In a clone they are the same files, under
spoa_agent/files/; `spoa-agent files` prints where they are."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "files"
EXAMPLE_CONFIG = SHIPPED / "agent.example.toml"
HAPROXY_CFG = SHIPPED / "haproxy" / "haproxy.cfg"
LUA_DENY = SHIPPED / "lua" / "spoa_deny.lua"
FAIL2BAN = SHIPPED / "fail2ban"

# `spoa-agent files NAME`: the groups an operator asks for by name.
GROUPS = ("haproxy", "lua", "fail2ban", "systemd", "logrotate")


def shipped_files() -> list[Path]:
    """Every shipped file, relative to SHIPPED, in a stable order."""
    return sorted(path.relative_to(SHIPPED) for path in SHIPPED.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)
