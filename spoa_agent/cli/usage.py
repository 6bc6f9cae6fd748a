"""`spoa-agent usage`: who used how much, from the roll-ups in Redis."""

from __future__ import annotations

import sys
import time
from typing import Literal, cast

import click
import redis

from spoa_agent.config import Config, parse_seconds
from spoa_agent.store.redis import redacted, sync_client
from spoa_agent.usage.report import By, render, rows
from spoa_agent.usage.store import names, read_cells


def _since(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_seconds(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command("usage")
@click.option("--key", "principal", default=None, metavar="ID",
              help="Only this key id (or JWT subject).")
@click.option("--since", default="24h", show_default=True, callback=_since,
              help="How far back: 24h, 7d, ... (hourly figures for up to two days, "
                   "daily ones beyond).")
@click.option("--by", type=click.Choice(["key", "model", "day"]), default="key",
              show_default=True, help="One row per key, model or day.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.pass_context
def usage(ctx: click.Context, principal: str | None, since: float, by: str, fmt: str) -> None:
    """LLM usage as the upstream reported it: requests, tokens in and out,
    errors, bytes and time, per key, model or day."""
    config: Config = ctx.obj["load"]()
    client = sync_client(config.redis.url, password=config.redis.password)
    now = time.time()
    try:
        cells = list(read_cells(client, now - since, now, principal))
        table = rows(cells, cast(By, by), names(client, {cell.principal for cell in cells}))
    except redis.RedisError as err:
        click.echo(f"spoa-agent: cannot read usage from Redis at "
                   f"{redacted(config.redis.url)}: {err}", err=True)
        sys.exit(1)
    finally:
        client.close()
    text = render(table, cast(Literal["table", "json", "csv"], fmt))
    if text:
        click.echo(text)
