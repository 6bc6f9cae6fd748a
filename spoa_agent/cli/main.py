"""The `spoa-agent` command: serve, check, config."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

import click
from click.core import ParameterSource

from spoa_agent import logging as agent_logging
from spoa_agent.auth.devices import CertificateError, read_certificate
from spoa_agent.cli.device import device
from spoa_agent.cli.doctor import doctor
from spoa_agent.cli.install import files, setup, uninstall
from spoa_agent.cli.secret_input import read_secret
from spoa_agent.cli.session import session
from spoa_agent.cli.token import token
from spoa_agent.cli.usage import usage
from spoa_agent.config import ENV_CONFIG, Config, ConfigError, load_config, parse_listen
from spoa_agent.server.settings import Listen
from spoa_agent.store.redis import parse_url

# `check --token` without the key in the process arguments.
ENV_CHECK_TOKEN = "SPOA_AGENT_CHECK_TOKEN"

# Exit codes scripts rely on (`check`): 0 allowed, 1 denied, 2 usage/config error.
EXIT_DENIED = 1
EXIT_USAGE = 2
# A body HAProxy could hand the agent whole (tune.bufsize is 16 kB by default);
# larger ones are refused by the agent anyway when a decision needs them.
MAX_CHECK_BODY = 1 << 20


class ListenType(click.ParamType[Listen]):
    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Listen:
        if isinstance(value, Listen):
            return value
        try:
            return parse_listen(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


def _load(ctx: click.Context) -> Config:
    return cast(Config, ctx.obj["load"]())


def _loader(ctx: click.Context) -> Callable[[], Config]:
    """Loads the config once, on first use, with --redis-url applied."""
    loaded: list[Config] = []

    def load() -> Config:
        if not loaded:
            try:
                config = load_config(ctx.obj["config_path"])
            except ConfigError as err:
                click.echo(f"spoa-agent: configuration error:\n{err}", err=True)
                sys.exit(EXIT_USAGE)
            if ctx.obj["redis_url"]:
                try:
                    parse_url(ctx.obj["redis_url"])
                except ValueError as err:
                    click.echo(f"spoa-agent: --redis-url: {err}", err=True)
                    sys.exit(EXIT_USAGE)
                config = replace(config, redis=replace(config.redis, url=ctx.obj["redis_url"]))
            loaded.append(config)
        return loaded[0]

    return load


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar=ENV_CONFIG, type=click.Path(dir_okay=False),
              help=f"Agent configuration (TOML). Env: {ENV_CONFIG}.")
@click.option("--redis-url", envvar="SPOA_AGENT_REDIS_URL", default=None,
              help="Redis for tokens and rate limits (default: config, else "
                   "redis://127.0.0.1:6379/0). Env: SPOA_AGENT_REDIS_URL.")
@click.version_option(package_name="spoa-agent")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, redis_url: str | None) -> None:
    """Authentication and policy agent for HAProxy (SPOE)."""
    ctx.obj = {"config_path": config_path, "redis_url": redis_url}
    ctx.obj["load"] = _loader(ctx)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Same as the global --config.")
@click.option("--listen", type=ListenType(), default=None,
              help="Address to listen on (env SPOA_AGENT_LISTEN; default 127.0.0.1:12345).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Processes serving the port (SO_REUSEPORT); default: config or 1.")
@click.pass_context
def serve(ctx: click.Context, config_path: str | None, listen: Listen | None,
          workers: int | None) -> None:
    """Serve SPOP to HAProxy until SIGTERM or SIGINT."""
    from spoa_agent.app import build_agent
    from spoa_agent.server import run
    from spoa_agent.server.workers import supervise

    if config_path is not None:
        ctx.obj["config_path"] = config_path
    config = _load(ctx)
    server = config.server
    if listen is not None:
        server = replace(server, listen=listen)
    if workers is not None:
        server = replace(server, workers=workers)

    log_stream = agent_logging.open_log_file(config.log.file)
    agent_logging.configure(config.log.level, log_stream)
    log = agent_logging.get_logger()
    if not config.routes and not config.deny_all:  # no file at all: a file must say deny_all
        log.warning("no_routes", error="no [[routes]] configured: every request is denied")
    # The agent's own listeners (usage) share their ports between workers too.
    agent = build_agent(replace(config, server=server), log)
    log_path = config.log.file

    def reopen_log() -> None:
        if log_stream is not None and log_path:
            try:
                agent_logging.reopen_log_file(log_stream, log_path)
            except OSError as err:  # keep writing to the old file
                log.error("log_reopen_failed", path=log_path, error=err.strerror)
                return
            log.info("log_reopened", path=log_path)

    agent.reopen.append(reopen_log)

    def serve_one() -> None:
        try:
            run(agent, server, log, reuse_port=server.workers > 1)
        except OSError as err:
            log.error("agent_listen_failed", listen=str(server.listen), error=err.strerror)
            sys.exit(1)

    if server.workers == 1:
        serve_one()
    else:
        sys.exit(supervise(server.workers, serve_one, log, grace=server.drain_timeout + 2,
                           on_signal=lambda signum: reopen_log()
                           if signum == signal.SIGUSR1 else None))


@cli.command()
@click.option("--method", required=True, help="HTTP method, e.g. POST.")
@click.option("--path", required=True, help="Request path, e.g. /api/chat.")
@click.option("--host", default="", help="Host header.")
@click.option("--token", default=None, envvar=ENV_CHECK_TOKEN,
              help="Check as this API key or JWT (looked up in Redis); default: any valid "
                   "key. On the command line the key is visible to every user of the "
                   f"machine (ps, /proc): prefer --token-stdin or env {ENV_CHECK_TOKEN}.")
@click.option("--token-stdin", is_flag=True,
              help="Read the API key or JWT from the first line of stdin (asked for "
                   "without echo on a terminal).")
@click.option("--device-cert", type=click.Path(path_type=Path), default=None,
              help="Check as a client presenting this certificate (PEM), as HAProxy "
                   "names it once verified (see `spoa-agent device`).")
@click.option("--ip", default="127.0.0.1", show_default=True, help="Client address.")
@click.option("--body", type=click.File("rb"), default=None,
              help="The request body, from a file or - for stdin, sent with its "
                   "Content-Length: body sizes and the key's models are checked on it.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.pass_context
def check(ctx: click.Context, method: str, path: str, host: str, token: str | None,
          token_stdin: bool, device_cert: Path | None, ip: str, body: BinaryIO | None,
          fmt: str) -> None:
    """Say whether a request would be allowed, and which rule decided.

    The key to check as comes from --token-stdin, env SPOA_AGENT_CHECK_TOKEN or
    --token (visible in the process list). Exits 0 when allowed, 1 when denied,
    2 on a usage or configuration error.
    """
    from spoa_agent.app import explain

    if token_stdin:
        if ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE:
            raise click.UsageError("give --token or --token-stdin, not both")
        if body is not None and body.name == "<stdin>":
            raise click.UsageError("--token-stdin and --body - both read stdin: give one")
        # Wins over the environment: asked for on this command line.
        token = read_secret("API key or JWT", "--token-stdin")
    device = None
    if device_cert is not None:
        try:
            device = read_certificate(device_cert)[0]
        except CertificateError as err:
            raise click.BadParameter(str(err), param_hint="--device-cert") from None
    config = _load(ctx)
    content = None if body is None else body.read(MAX_CHECK_BODY + 1)
    if content is not None and len(content) > MAX_CHECK_BODY:
        raise click.BadParameter(f"larger than {MAX_CHECK_BODY} bytes, more than HAProxy "
                                 "holds for the agent", param_hint="--body")
    try:
        answer = explain(config, method.upper(), path, host, ip, token, content, device)
    except ValueError as err:  # a bad --ip
        raise click.BadParameter(str(err), param_hint="--ip") from None
    if fmt == "json":
        click.echo(json.dumps(asdict(answer)))
    else:
        verdict = "ALLOW" if answer.allowed else f"DENY {answer.status}"
        rule = f" (rule: {answer.rule})" if answer.rule else ""
        who = f" as {answer.principal}" if answer.principal else (
            "" if token or device else " as any valid key")
        click.echo(f"{verdict} {method.upper()} {path}{who}: {answer.reason}{rule}")
    sys.exit(0 if answer.allowed else EXIT_DENIED)


@cli.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("validate")
# A plain Path: load_config names a directory or an unreadable file in one line.
@click.argument("path", required=False, type=click.Path())
@click.pass_context
def config_validate(ctx: click.Context, path: str | None) -> None:
    """Report every problem in a config file; exit 2 if there is one.

    A file without routes is a problem unless it says deny_all = true.
    """
    path = path or ctx.obj["config_path"]
    if path is None:
        raise click.UsageError("give a PATH or --config")
    try:
        config = load_config(path, env={})
    except ConfigError as err:
        for problem in err.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_USAGE)
    deny_all = ": deny_all, every request is refused" if config.deny_all else ""
    click.echo(f"{path}: OK ({len(config.routes)} routes{deny_all})")


cli.add_command(token)
cli.add_command(device)
cli.add_command(doctor)
for command in (files, setup, uninstall, usage, session):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="spoa-agent")
