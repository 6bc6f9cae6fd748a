"""`spoa-agent doctor`: checks a deployment (being built)."""

from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Check this node's deployment, and a gateway URL from outside."""
    raise click.ClickException("not built yet")
