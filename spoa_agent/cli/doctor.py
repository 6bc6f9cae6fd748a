"""`spoa-agent doctor`: checks a deployment, this node's parts and, with
--url, the gateway as clients see it; prints a checklist. The checks
themselves are in spoa_agent/install/doctor.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import click

from spoa_agent.cli.secret_input import read_secret
from spoa_agent.install import doctor as checks
from spoa_agent.install import layout

# The key doctor sends as a client, never on the command line (ps shows it).
ENV_DOCTOR_KEY = "SPOA_AGENT_DOCTOR_KEY"


def _check_names(ctx: click.Context, param: click.Parameter,
                 value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not any(check == name or check.startswith(name + "-")
                   for check in checks.ALL_CHECKS):
            raise click.BadParameter(f"no check {name!r}; checks: "
                                     + ", ".join(checks.ALL_CHECKS))
    return value


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    """`--skip redis` skips redis and every redis-* check."""
    return any(name == s or name.startswith(s + "-") for s in skip)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"The agent's config (default: the global --config, else "
                   f"{layout.AGENT_CONFIG}).")
@click.option("--agent-env", type=click.Path(dir_okay=False), default=str(layout.AGENT_ENV),
              show_default=True,
              help="The agent's environment file (Redis URL and password), read if present.")
@click.option("--haproxy-dropin", type=click.Path(dir_okay=False),
              default=str(layout.HAPROXY_DROPIN), show_default=True,
              help="HAProxy's systemd drop-in: its Environment= lines and WorkingDirectory "
                   "say where the rest is.")
@click.option("--haproxy-config", type=click.Path(dir_okay=False), default=None,
              help=f"The gateway's haproxy.cfg (default: the drop-in's CONFIG, else "
                   f"{layout.GATEWAY_CFG}).")
@click.option("--haproxy-socket", type=click.Path(), default=None,
              help=f"HAProxy's stats socket (default: HAPROXY_RUN_DIR/"
                   f"{checks.STATS_SOCKET_NAME} from the drop-in, else {layout.HAPROXY_SOCKET}).")
@click.option("--haproxy", "haproxy_binary", default="haproxy", show_default=True,
              help="The HAProxy binary to check the config with.")
@click.option("--fail2ban-client", "fail2ban_binary", default="fail2ban-client",
              show_default=True, help="fail2ban's client.")
@click.option("--fail2ban-socket", default=None,
              help="fail2ban's socket (fail2ban-client -s; default: fail2ban's own).")
@click.option("--banlist", default=None,
              help=f"HAProxy's ban list (default: the drop-in's HAPROXY_BANLIST, else "
                   f"{layout.BANLIST}).")
@click.option("--url", default=None,
              help="Also check the gateway from outside, as a client: https://ai.example.com.")
@click.option("--key-stdin", is_flag=True,
              help=f"Read an API key for the --url checks from stdin (or set {ENV_DOCTOR_KEY}).")
@click.option("--cacert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Trust this CA for --url https:// (a private or self-signed certificate).")
@click.option("--upstream-port", type=click.IntRange(1, 65535),
              default=checks.DEFAULT_UPSTREAM_PORT, show_default=True,
              help="The AI backend's own port, which must not answer on the --url host.")
@click.option("--url-only", is_flag=True,
              help="Only the --url checks: from a machine that is not a gateway node.")
@click.option("--skip", multiple=True, metavar="NAME", callback=_check_names,
              help="Skip a check (repeatable); `--skip redis` skips every redis-* check.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.pass_context
def doctor(ctx: click.Context, config_path: str | None, agent_env: str, haproxy_dropin: str,
           haproxy_config: str | None, haproxy_socket: str | None, haproxy_binary: str,
           fail2ban_binary: str, fail2ban_socket: str | None, banlist: str | None,
           url: str | None, key_stdin: bool, cacert: str | None, upstream_port: int,
           url_only: bool, skip: tuple[str, ...], fmt: str) -> None:
    """Check this node's deployment, and a gateway URL from outside.

    One line per check, then what to do for each that failed. Exits 0 when
    every check passed, 1 otherwise, 2 on a usage error. Each check gives up
    after 6 s.
    """
    if url is not None and (urlsplit(url).scheme not in ("http", "https")
                            or not urlsplit(url).hostname):
        raise click.BadParameter("expected http(s)://HOST[:PORT]", param_hint="--url")
    if url is None and (url_only or key_stdin):
        raise click.UsageError("--url-only and --key-stdin go with --url")
    key = (read_secret("API key", "--key-stdin") if key_stdin
           else os.environ.get(ENV_DOCTOR_KEY) or None)
    obj = ctx.find_root().obj or {}

    results: list[checks.Check] = []
    probes: list[checks.Probe] = []
    if not url_only:
        node = checks.resolve_node(
            config_path=Path(config_path or obj.get("config_path") or layout.AGENT_CONFIG),
            dropin_path=Path(haproxy_dropin),
            haproxy_config=Path(haproxy_config) if haproxy_config else None,
            stats_socket=Path(haproxy_socket) if haproxy_socket else None,
            banlist=banlist, agent_env=Path(agent_env))
        config_result, config = checks.config_check(node)
        results.append(config_result)
        probes += checks.node_probes(
            node, config, shutil.which(haproxy_binary) or haproxy_binary, fail2ban_binary,
            fail2ban_socket, obj.get("redis_url"))
    if url is not None:
        probes += checks.url_probes(checks.GatewayUrl(url, cacert), key, upstream_port)
    probes = [p for p in probes if not all(_skipped(name, skip) for name in p.names)]
    results += checks.run_probes(probes)
    results = [check for check in results if not _skipped(check.name, skip)]

    if fmt == "json":
        click.echo(json.dumps([{"check": check.name, "ok": check.ok, "detail": check.detail,
                                "fix": check.fix} for check in results], indent=2))
    else:
        echo_checklist(results)
    ctx.exit(0 if all(check.ok for check in results) else 1)


def echo_checklist(results: list[checks.Check]) -> None:
    """One line per check, ✓ or ✗, and what to do under each ✗."""
    width = max((len(check.name) for check in results), default=0)
    for check in results:
        click.echo(f"{'✓' if check.ok else '✗'} {check.name:<{width}}  {check.detail}")
        if not check.ok:
            click.echo(f"  {'':<{width}}  → {check.fix}")
