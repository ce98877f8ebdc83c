"""What every command shares: the consoles, progress lines, JSON output, list parsing."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import click
from rich.console import Console

from edgeprune.errors import InputError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


@contextmanager
def progress(name: str):
    """A step of a long command: a spinner while it runs, a tick and its time when done.

    It yields ``update(text)``, which shows how far the step got beside its name.
    """
    start = time.perf_counter()
    with err.status(f"{name}…") as status:
        yield lambda text: status.update(f"{name}: {text}")
    err.print(f"[green]✓[/green] {name} [dim]({time.perf_counter() - start:.1f} s)[/dim]")


def csv(kind: type, text: str, flag: str) -> list:
    """Returns the comma-separated values of a flag; InputError naming the flag when one does not parse."""
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} must be a comma-separated list, got {text!r}") from None
