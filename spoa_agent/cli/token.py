"""`spoa-agent token ...`: create, list, show, update, rotate, revoke, delete API keys.

The secret is printed once, at create and rotate, and never stored: Redis
holds only its argon2id hash. Errors are one line naming what is wrong (an
unknown id, a bad duration, Redis unreachable at URL) and a non-zero exit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import redis

from spoa_agent.auth import SecretHasher
from spoa_agent.auth.authenticator import principal_of
from spoa_agent.auth.keys import (
    KeyFormatError,
    format_key,
    looks_like_key,
    new_key_id,
    new_secret,
    parse_key,
)
from spoa_agent.config import Config, parse_seconds
from spoa_agent.ratelimit.budget import tokens_left
from spoa_agent.ratelimit.limits import parse_rate, parse_token_budget
from spoa_agent.ratelimit.plan import plan_limits
from spoa_agent.store.redis import redacted, sync_client
from spoa_agent.store.tokens import KeyRecord, TokenStore, UnknownKey, model_budgets

EXIT_FAILED = 1


class DurationType(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            return parse_seconds(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class RateType(click.ParamType[str]):
    """A rate (or, with parse_token_budget, a token budget) as given, or 'none'."""

    name = "N/PERIOD"

    def __init__(self, parse: Callable[[str], object] = parse_rate) -> None:
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text.lower() == "none":
            return "none"
        try:
            self.parse(text)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return text


class TokenBudgetType(click.ParamType[tuple[str, str]]):
    """`200k/d` (the key's budget) or `MODEL=50k/d` (its budget for MODEL), or
    either with `none`: as (model or "", budget text or "none")."""

    name = "[MODEL=]N/PERIOD"
    budget = RateType(parse_token_budget)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        model, _, text = str(value).rpartition("=")
        model = model.strip()
        if "=" in str(value) and (not model or not model.isprintable() or len(model) > 256):
            self.fail(f"expected MODEL=BUDGET with a model name, got {value!r}", param, ctx)
        return model, self.budget.convert(text, param, ctx)


def _with_budgets(tokens: str | None, per_model: dict[str, str],
                  budgets: tuple[tuple[str, str], ...]) -> tuple[str | None, dict[str, str]]:
    """A key's budget and its budgets per model after --tokens options
    (`none` removes one)."""
    per_model = dict(per_model)
    for model, budget in budgets:
        value = None if budget == "none" else budget
        if not model:
            tokens = value
        elif value is None:
            per_model.pop(model, None)
        else:
            per_model[model] = value
    return tokens, per_model


def budget_fields(budgets: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """A new record's `tokens` and `model_tokens` from --tokens options."""
    tokens, per_model = _with_budgets(None, {}, budgets)
    return {"tokens": tokens, "model_tokens": model_budgets(per_model)}


def _budget_changes(record: KeyRecord,
                    budgets: tuple[tuple[str, str], ...]) -> dict[str, str | None]:
    """The record fields --tokens options change (`token update`)."""
    tokens, per_model = _with_budgets(record.tokens, dict(record.model_tokens), budgets)
    changes: dict[str, str | None] = {}
    if any(not model for model, _ in budgets):
        changes["tokens"] = tokens
    if any(model for model, _ in budgets):
        changes["model_tokens"] = json.dumps(dict(model_budgets(per_model))) if per_model \
            else None
    return changes


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    """Rows (the first names the columns) in aligned columns (`token list`, `device list`)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                   .rstrip())


def _fail(message: str) -> None:
    click.echo(f"spoa-agent: {message}", err=True)
    sys.exit(EXIT_FAILED)


@contextmanager
def _store(ctx: click.Context) -> Iterator[TokenStore]:
    config: Config = ctx.obj["load"]()
    url = config.redis.url
    client = sync_client(url, password=config.redis.password)
    try:
        yield TokenStore(client)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        _fail(f"cannot reach Redis at {redacted(url)}: {err}")
    except redis.RedisError as err:
        _fail(f"Redis at {redacted(url)} refused: {err}")
    except UnknownKey as err:
        _fail(f"no key with id {err.args[0]!r} (see `spoa-agent token list`)")
    finally:
        client.close()


def _key_id(ctx: click.Context, value: str) -> str:
    """An id, or a whole key pasted by mistake: both name the key."""
    prefix = ctx.obj["load"]().auth.key_prefix
    if looks_like_key(value, prefix):
        try:
            return parse_key(value, prefix).key_id
        except KeyFormatError:
            pass
    if not re.fullmatch(r"[0-9A-Za-z]{12}", value):
        raise click.BadParameter(f"{value!r} is not a key id (12 letters and digits)")
    return value


def _hasher(ctx: click.Context) -> SecretHasher:
    return SecretHasher(ctx.obj["load"]().auth.argon2)


def _print_secret(record: KeyRecord, token: str, fmt: str, verb: str, extra: str = "") -> None:
    if fmt == "json":
        click.echo(json.dumps({**record.public(time.time()), "token": token}))
        return
    click.echo(f"{verb} key {record.name!r} (id {record.key_id}){extra}.", err=True)
    click.echo("The secret is shown only this once; store it now:\n", err=True)
    click.echo(token)
    click.echo("\nSend it as `Authorization: Bearer <key>` or `x-api-key: <key>`.", err=True)


def _print_record(record: KeyRecord, fmt: str,
                  left: dict[str, tuple[str, int]] | None = None) -> None:
    """The record; `left`: per model ("*": any other), its budget and what it has left."""
    info = record.public(time.time())
    if left:
        info["tokens_left"] = {model: n for model, (_, n) in left.items()}
    if fmt == "json":
        click.echo(json.dumps(info))
        return
    for label, value in [
        ("id", info["id"]), ("name", info["name"]), ("status", info["status"]),
        ("scopes", " ".join(record.scopes) or "-"), ("routes", " ".join(record.routes) or "any"),
        ("models", " ".join(record.models) or "any"), ("rate", record.rate or "-"),
        ("token budget", record.tokens or "-"),
        ("per model", " ".join(f"{model}={budget}" for model, budget in record.model_tokens)
         or "-"),
        ("max in flight", str(record.max_in_flight or "-")),
        ("created", _when(record.created_at)), ("expires", _when(record.expires_at)),
        ("revoked", _when(record.revoked_at)), ("last used", _when(record.last_used_at)),
        ("old secret until", _when(record.prev_hash_until)),
        *[(f"tokens left ({model})", f"{n} of {budget}") for model, (budget, n)
          in (left or {}).items()],
    ]:
        click.echo(f"{label:>17}  {value}")


FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                      show_default=True)


def _restrictions(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--scope", "scopes", multiple=True, help="Scope granted (repeatable)."),
        click.option("--route", "routes", multiple=True,
                     help="Only these route rules (names from the config; repeatable)."),
        click.option("--model", "models", multiple=True,
                     help="Only these models (repeatable)."),
        click.option("--max-in-flight", "max_in_flight", type=click.IntRange(0, 100_000),
                     default=None, help="Requests at once (counted by HAProxy; 0 removes it)."),
        click.option("--rate", type=RateType(), default=None,
                     help="Per-key rate limit, e.g. 60/m, 100/5m or 60/m,burst=10 "
                          "('none' removes it)."),
        click.option("--tokens", "budgets", type=TokenBudgetType(), multiple=True,
                     help="LLM token budget, e.g. 200k/d, or one model's: "
                          "llama3.1:70b=50k/d (repeatable; 'none' removes one; "
                          "see docs/usage.md)."),
    ]):
        fn = option(fn)
    return fn


@click.group()
def token() -> None:
    """Manage API keys (stored as argon2id hashes in Redis)."""


@token.command()
@click.option("--name", required=True, help="Who or what uses the key, e.g. laptop-aider.")
@_restrictions
@click.option("--expires", type=DurationType(), default=None, help="Lifetime, e.g. 30d or 12h.")
@FORMAT
@click.pass_context
def create(ctx: click.Context, name: str, scopes: tuple[str, ...], routes: tuple[str, ...],
           models: tuple[str, ...], max_in_flight: int | None, rate: str | None,
           budgets: tuple[tuple[str, str], ...], expires: float | None, fmt: str) -> None:
    """Create a key and print its secret once."""
    if not name.strip() or len(name) > 200 or not name.isprintable():
        raise click.BadParameter("give a printable name of 1 to 200 characters",
                                 param_hint="--name")
    prefix = ctx.obj["load"]().auth.key_prefix
    secret = new_secret()
    hashed = _hasher(ctx).hash(secret)
    now = time.time()
    with _store(ctx) as store:
        for _ in range(5):
            record = KeyRecord(
                key_id=new_key_id(), name=name.strip(), hash=hashed, scopes=scopes,
                routes=routes, models=models, rate=None if rate in (None, "none") else rate,
                **budget_fields(budgets),
                max_in_flight=max_in_flight or None,
                created_at=now, expires_at=now + expires if expires else None,
            )
            if store.create(record):
                break
        else:
            _fail("could not draw a free key id in 5 tries")
    _print_secret(record, format_key(prefix, record.key_id, secret), fmt, "Created")


@token.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--status", type=click.Choice(["active", "revoked", "expired"]), default=None,
              help="Only keys in this state.")
@click.option("--name", "name_part", default=None, help="Only keys whose name contains this.")
@click.pass_context
def list_keys(ctx: click.Context, fmt: str, status: str | None, name_part: str | None) -> None:
    """List keys (never their secrets)."""
    now = time.time()
    with _store(ctx) as store:
        records = [r for r in store.list()
                   if (status is None or r.status(now) == status)
                   and (name_part is None or name_part.lower() in r.name.lower())]
    if fmt == "json":
        click.echo(json.dumps([r.public(now) for r in records]))
        return
    rows = [("ID", "NAME", "STATUS", "SCOPES", "RATE", "EXPIRES", "LAST USED")]
    rows += [(r.key_id, r.name, r.status(now), ",".join(r.scopes) or "-", r.rate or "-",
              _when(r.expires_at), _when(r.last_used_at)) for r in records]
    _table(rows)
    click.echo(f"{len(records)} key(s)", err=True)


@token.command()
@click.argument("key_id")
@FORMAT
@click.pass_context
def show(ctx: click.Context, key_id: str, fmt: str) -> None:
    """Show one key (never its secret), and what its token budgets have left."""
    limits = ctx.obj["load"]().ratelimit
    with _store(ctx) as store:
        record = store.get(_key_id(ctx, key_id))
        principal = principal_of(record)
        # Its budget, and one per model that has its own (the key's or the config's).
        models = ["", *sorted({model for model, _ in record.model_tokens}
                              | set(limits.tokens_per_model))]
        left = {}
        for model in models:
            budget = plan_limits(limits, principal, "", "", None, model)[-1:]
            if budget and budget[0].is_budget:
                left[model or "*"] = (budget[0].key.rsplit("@", 1)[1],
                                      tokens_left(store.client, budget[0]))
    _print_record(record, fmt, left)


@token.command()
@click.argument("key_id")
@_restrictions
@click.option("--expires", default=None, metavar="DURATION|never",
              help="New lifetime from now (e.g. 30d), or 'never'.")
@FORMAT
@click.pass_context
def update(ctx: click.Context, key_id: str, scopes: tuple[str, ...], routes: tuple[str, ...],
           models: tuple[str, ...], max_in_flight: int | None, rate: str | None,
           budgets: tuple[tuple[str, str], ...], expires: str | None, fmt: str) -> None:
    """Change a key's scopes, routes, models, rate, token budget or expiry; agents see it
    within a second."""
    changes: dict[str, str | None] = {}
    for name, values in (("scopes", scopes), ("routes", routes), ("models", models)):
        if values:
            changes[name] = json.dumps([] if values == ("none",) else list(values))
    if rate is not None:
        changes["rate"] = None if rate == "none" else rate
    if max_in_flight is not None:
        changes["max_in_flight"] = str(max_in_flight) if max_in_flight else None
    if expires is not None:
        if expires == "never":
            changes["expires_at"] = None
        else:
            try:
                changes["expires_at"] = str(time.time() + parse_seconds(expires))
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--expires") from None
    if not (changes or budgets):
        raise click.UsageError("nothing to change: give --scope, --route, --model, --rate, "
                               "--tokens, --max-in-flight or --expires")
    key_id = _key_id(ctx, key_id)
    with _store(ctx) as store:
        if budgets:
            changes.update(_budget_changes(store.get(key_id), budgets))
        record = store.update(key_id, changes)
    _print_record(record, fmt)


@token.command()
@click.argument("key_id")
@click.option("--grace", type=DurationType(), default=None,
              help="Keep the old secret valid this long (e.g. 10m); default: not at all.")
@FORMAT
@click.pass_context
def rotate(ctx: click.Context, key_id: str, grace: float | None, fmt: str) -> None:
    """Give a key a new secret (same id, same settings) and print it once."""
    key_id = _key_id(ctx, key_id)
    secret = new_secret()
    hashed = _hasher(ctx).hash(secret)
    with _store(ctx) as store:
        record = store.rotate(key_id, hashed, grace or 0.0, time.time())
    extra = f"; the old secret works until {_when(record.prev_hash_until)}" if grace else ""
    prefix = ctx.obj["load"]().auth.key_prefix
    _print_secret(record, format_key(prefix, key_id, secret), fmt, "Rotated", extra)


@token.command()
@click.argument("key_id")
@click.pass_context
def revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key now; every agent refuses it within a second. The record stays."""
    key_id = _key_id(ctx, key_id)
    with _store(ctx) as store:
        record = store.update(key_id, {"revoked_at": str(time.time())})
    click.echo(f"Revoked key {record.name!r} (id {key_id}).")


@token.command()
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def delete(ctx: click.Context, key_id: str, yes: bool) -> None:
    """Delete a key's record for good (revoke keeps it for the record)."""
    key_id = _key_id(ctx, key_id)
    if not yes:
        click.confirm(f"Delete key {key_id} for good?", abort=True)
    with _store(ctx) as store:
        store.delete(key_id)
    click.echo(f"Deleted key {key_id}.")
