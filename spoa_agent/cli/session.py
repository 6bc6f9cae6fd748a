"""`spoa-agent session list|revoke`: browser sessions (auth = "oidc" routes).

A revoked session is refused at its next request by every agent: agents
read the session from Redis on each request and keep no copy."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
import redis

from spoa_agent.config import Config
from spoa_agent.oidc.sessions import SessionAdmin
from spoa_agent.store.redis import redacted, sync_client

EXIT_FAILED = 1


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _admin(ctx: click.Context) -> Iterator[SessionAdmin]:
    config: Config = ctx.obj["load"]()
    client = sync_client(config.redis.url, password=config.redis.password)
    try:
        yield SessionAdmin(client)
    except redis.RedisError as err:
        click.echo(f"spoa-agent: Redis at {redacted(config.redis.url)}: {err}", err=True)
        sys.exit(EXIT_FAILED)
    finally:
        client.close()


@click.group()
def session() -> None:
    """Browser sessions of signed-in users (auth = "oidc" routes)."""


@session.command("list")
@click.option("--user", default=None, help="Only this user's (subject, email or name).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def list_sessions(ctx: click.Context, user: str | None, fmt: str) -> None:
    """Sessions not ended yet, oldest first."""
    with _admin(ctx) as admin:
        found = admin.find(user)
    if fmt == "json":
        click.echo(json.dumps([json.loads(s.to_json()) for s in found]))
        return
    click.echo(f"{'ID':<34}{'USER':<32}{'GROUPS':<24}{'CREATED':<22}EXPIRES")
    for s in found:
        click.echo(f"{s.id:<34}{(s.email or s.name or s.sub)[:30]:<32}"
                   f"{','.join(s.groups)[:22]:<24}{_when(s.created):<22}{_when(s.expires)}")


@session.command("revoke")
@click.argument("session_id", required=False)
@click.option("--user", default=None, help="Every session of this user instead.")
@click.pass_context
def revoke(ctx: click.Context, session_id: str | None, user: str | None) -> None:
    """End a session (its ID from `session list`), or every session of --user."""
    if (session_id is None) == (user is None):
        raise click.UsageError("name one session ID, or --user USER")
    with _admin(ctx) as admin:
        if user is not None:
            ended = admin.revoke_user(user)
            click.echo(f"revoked {len(ended)} session(s) of {user}")
            return
        assert session_id is not None
        if not admin.revoke(session_id):
            click.echo(f"spoa-agent: no session with id {session_id!r} "
                       "(see `spoa-agent session list`)", err=True)
            sys.exit(EXIT_FAILED)
    click.echo(f"revoked {session_id}")
