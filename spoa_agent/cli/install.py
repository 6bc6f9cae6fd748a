"""`spoa-agent files`, `setup` and `uninstall`: the shipped files, and
putting them in their places on a host (spoa_agent/install/)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from spoa_agent.cli.doctor import echo_checklist
from spoa_agent.cli.secret_input import read_secret
from spoa_agent.install.doctor import redis_checks
from spoa_agent.install.installer import (
    DEFAULT_REDIS_URL,
    Setup,
    SetupError,
    Step,
    Uninstall,
    carry_out,
)
from spoa_agent.install.shipped import GROUPS, SHIPPED, shipped_files
from spoa_agent.store.redis import parse_url

ENV_REDIS_PASSWORD = "SPOA_AGENT_REDIS_PASSWORD"


@click.command("files")
@click.argument("group", required=False, type=click.Choice(GROUPS))
@click.option("--list", "list_them", is_flag=True, help="List every shipped file.")
def files(group: str | None, list_them: bool) -> None:
    """Where the shipped files are: HAProxy config, SPOE file, Lua, fail2ban,
    systemd units, logrotate, the example agent config.

    With GROUP, that group's directory (e.g. `spoa-agent files haproxy`)."""
    if not list_them:
        click.echo(SHIPPED / group if group else SHIPPED)
        return
    for name in shipped_files():
        if group is None or name.parts[0] == group:
            click.echo(SHIPPED / name)


root_option = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
    show_default=True, help="Install under this directory instead (a scratch root: no "
                            "user is created and no command runs).")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Print every file and command; change nothing.")


def _needs_root(root: Path, dry_run: bool) -> None:
    if root == Path("/") and not dry_run and os.geteuid() != 0:
        raise click.ClickException("this changes /etc and systemd: run it as root "
                                   "(or try --dry-run, or --root DIR)")


def _carry_out(steps: Callable[[], list[Step]], dry_run: bool, title: str) -> None:
    try:
        planned = steps()
        if dry_run:
            click.echo(f"{title} --dry-run: nothing changes; the steps would be:")
            for step in planned:
                click.echo(f"  {step.verb:<9} {step.what}")
            return
        click.echo(f"{title}:")
        carry_out(planned, lambda step: click.echo(f"  {step.verb:<9} {step.what}"))
    except (SetupError, OSError) as err:
        raise click.ClickException(str(err)) from None


@click.command("setup")
@root_option
@dry_run_option
@click.option("--redis-url", default=None, metavar="URL",
              help="Use this Redis (redis://host:port/db, rediss://, redis+sentinel://) "
                   "instead of installing the distribution's redis-server. A password "
                   f"goes through --redis-password-stdin or {ENV_REDIS_PASSWORD}, never here.")
@click.option("--redis-password-stdin", is_flag=True,
              help="Read Redis's password from stdin into /etc/spoa-agent/env.")
def setup(root: Path, dry_run: bool, redis_url: str | None, redis_password_stdin: bool) -> None:
    """Install the agent as a systemd service on this Debian/Ubuntu host, with
    HAProxy's, fail2ban's and logrotate's files. Safe to run again: unedited
    files are updated, edited ones are kept and the new version goes beside
    them as FILE.new."""
    _needs_root(root, dry_run)
    password = os.environ.get(ENV_REDIS_PASSWORD) or None
    if redis_password_stdin:
        password = read_secret("Redis password", "--redis-password-stdin")
    if redis_url:
        try:
            parse_url(redis_url)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--redis-url") from None
        if "@" in redis_url.partition("://")[2].split("/")[0]:
            raise click.BadParameter(
                "the URL carries credentials, which would show in the process list: give "
                f"the password through --redis-password-stdin or {ENV_REDIS_PASSWORD}",
                param_hint="--redis-url")
    plan = Setup(root.resolve(), redis_url=redis_url, redis_password=password)
    _carry_out(plan.steps, dry_run, "spoa-agent setup")
    if plan.host.real and not dry_run:
        # A Redis that keeps nothing on disk loses every key on restart.
        click.echo("redis:")
        echo_checklist(redis_checks(redis_url or DEFAULT_REDIS_URL, password))
    if not dry_run:
        click.echo("next:")
        for note in plan.next_steps():
            click.echo(f"  - {note}")


@click.command("uninstall")
@root_option
@dry_run_option
@click.option("--purge", is_flag=True,
              help="Also remove what holds data: edited config files, the ban list, "
                   "and the system user setup created.")
def uninstall(root: Path, dry_run: bool, purge: bool) -> None:
    """Remove what `spoa-agent setup` installed, and nothing else. Files edited
    since, and the ban list once it holds bans, are kept unless --purge."""
    _needs_root(root, dry_run)
    try:
        plan = Uninstall(root.resolve(), purge=purge)
    except SetupError as err:
        raise click.ClickException(str(err)) from None
    _carry_out(plan.steps, dry_run, "spoa-agent uninstall")
