"""Secrets on the command line's stdin, never in its arguments (which every
user of the host can read in the process list)."""

from __future__ import annotations

import sys

import click


def read_secret(what: str, option: str) -> str:
    """The first line of stdin, or a prompt that does not echo when stdin is
    a terminal; `what` names the secret, `option` the flag that asked for it."""
    if sys.stdin.isatty():
        line = str(click.prompt(what, hide_input=True, err=True))
    else:
        line = sys.stdin.readline()
    if not line.strip():
        raise click.BadParameter(f"no {what} on the first line of stdin", param_hint=option)
    return line.strip()
