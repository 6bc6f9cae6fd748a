"""`spoa-agent device ...`: register, list and revoke device certificates.

A registered, unrevoked certificate is a principal like an API key, with the
same scopes, routes, models and limits (cli/token.py's options), for clients
whose TLS certificate HAProxy verified (TLS_CLIENT_CA). Only the
certificate's SHA-256 is stored; nothing secret is read or printed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from spoa_agent.auth.devices import (
    FINGERPRINT,
    NO_SECRET,
    CertificateError,
    device_id,
    read_certificate,
)
from spoa_agent.cli.token import (
    FORMAT,
    _fail,
    _restrictions,
    _store,
    _table,
    _when,
    budget_fields,
)
from spoa_agent.store.tokens import CHANNEL, DEVICE_INDEX, KeyRecord, TokenStore, UnknownKey


@contextmanager
def _devices(ctx: click.Context) -> Iterator[TokenStore]:
    with _store(ctx) as keys:
        try:
            yield TokenStore(keys.client, DEVICE_INDEX)
        except UnknownKey as err:
            _fail(f"no device with id {err.args[0]!r} (see `spoa-agent device list`)")


def _device_id(value: str) -> str:
    """An id, or a whole fingerprint (openssl's colons allowed): both name the device."""
    text = value.strip().lower().replace(":", "")
    if FINGERPRINT.fullmatch(text):
        return device_id(text)
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise click.BadParameter(f"{value!r} is not a device id (12 hex digits, see "
                                 "`spoa-agent device list`)")
    return text


def _get(store: TokenStore, key_id: str) -> KeyRecord:
    record = store.get(key_id)
    if record.cert_sha256 is None:  # an API key's id
        raise UnknownKey(key_id)
    return record


def _public(record: KeyRecord, now: float) -> dict[str, Any]:
    info = record.public(now)
    del info["previous_secret_valid_until"]
    return {**info, "cert_sha256": record.cert_sha256}


@click.group()
def device() -> None:
    """Manage device certificates (mTLS): a registered certificate is a principal
    like an API key, for clients HAProxy verified against TLS_CLIENT_CA."""


@device.command()
@click.option("--cert", "cert", required=True, type=click.Path(path_type=Path),
              help="The device's certificate (PEM); its key is never needed.")
@click.option("--name", required=True, help="Who or what uses it, e.g. laptop.")
@_restrictions
@FORMAT
@click.pass_context
def add(ctx: click.Context, cert: Path, name: str, scopes: tuple[str, ...],
        routes: tuple[str, ...], models: tuple[str, ...], max_in_flight: int | None,
        rate: str | None, budgets: tuple[tuple[str, str], ...], fmt: str) -> None:
    """Register a device's certificate; agents accept it within a second."""
    if not name.strip() or len(name) > 200 or not name.isprintable():
        raise click.BadParameter("give a printable name of 1 to 200 characters",
                                 param_hint="--name")
    try:
        fingerprint, subject = read_certificate(cert)
    except CertificateError as err:
        raise click.BadParameter(str(err), param_hint="--cert") from None
    record = KeyRecord(
        key_id=device_id(fingerprint), name=name.strip(), hash=NO_SECRET, scopes=scopes,
        routes=routes, models=models, rate=None if rate in (None, "none") else rate,
        max_in_flight=max_in_flight or None, created_at=time.time(), cert_sha256=fingerprint,
        **budget_fields(budgets))
    with _devices(ctx) as store:
        if not store.create(record):
            taken = store.get(record.key_id)
            if taken.cert_sha256 == fingerprint:
                _fail(f"this certificate is registered already, as {taken.name!r} (id "
                      f"{taken.key_id}, {taken.status(time.time())}); a revoked one stays "
                      "revoked: give the device a new certificate")
            _fail(f"id {record.key_id} is taken by an API key's record; "
                  "`spoa-agent token delete` it first")
        # An agent may hold "unknown device" for this certificate: it forgets it now.
        store.client.publish(CHANNEL, record.key_id)
    if fmt == "json":
        click.echo(json.dumps(_public(record, time.time())))
        return
    click.echo(f"Registered device {record.name!r} (id {record.key_id}) for {subject}.")


@device.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def list_devices(ctx: click.Context, fmt: str) -> None:
    """List registered devices and their certificates' SHA-256."""
    now = time.time()
    with _devices(ctx) as store:
        records = [r for r in store.list() if r.cert_sha256 is not None]
    if fmt == "json":
        click.echo(json.dumps([_public(r, now) for r in records]))
        return
    rows = [("ID", "NAME", "STATUS", "SCOPES", "RATE", "LAST USED", "SHA256")]
    rows += [(r.key_id, r.name, r.status(now), ",".join(r.scopes) or "-", r.rate or "-",
              _when(r.last_used_at), r.cert_sha256 or "") for r in records]
    _table(rows)
    click.echo(f"{len(records)} device(s)", err=True)


@device.command()
@click.argument("device_id")
@click.pass_context
def revoke(ctx: click.Context, device_id: str) -> None:
    """Revoke a device now; every agent refuses its certificate within a second."""
    key_id = _device_id(device_id)
    with _devices(ctx) as store:
        _get(store, key_id)
        record = store.update(key_id, {"revoked_at": str(time.time())})
    click.echo(f"Revoked device {record.name!r} (id {key_id}).")
