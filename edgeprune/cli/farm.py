"""`edgeprune farm status`: the agents of a farm file and what each is doing."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import emit_json


@click.group()
def farm() -> None:
    """A device farm: agents listed in a farm file (devices.toml); see README "Many devices"."""


@farm.command("status")
@click.argument("farm_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def farm_status_cmd(farm_file: Path, as_json: bool) -> None:
    """Show each agent of FARM_FILE: health, device, runtimes, queue. Exit 3 when any agent is down."""
    from edgeprune.farm.status import farm_status

    rows = farm_status(farm_file)
    if as_json:
        emit_json({"agents": rows})
    else:
        for r in rows:
            if r["health"] == "up":
                runtimes = ", ".join(f"{k} {v}" for k, v in r["runtimes"].items())
                click.echo(f"{r['name']:<16} up    {r['profile']:<20} {r['device']} ({runtimes}); "
                           f"{r['threads']} threads, queue {r['queue']}, {r['measurements']} measured  {r['url']}")
            else:
                click.echo(f"{r['name']:<16} down  {r['profile']:<20} {r['why']}  {r['url']}")
        up = sum(r["health"] == "up" for r in rows)
        click.echo(f"{up} of {len(rows)} agents up")
    if any(r["health"] != "up" for r in rows):
        raise SystemExit(3)
