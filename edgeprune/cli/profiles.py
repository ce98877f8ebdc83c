"""`edgeprune profiles`: the hardware-profile registry, listed, shown and probed."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgeprune.cli.common import emit_json, err, out, progress
from edgeprune.errors import InputError
from edgeprune.gate import ESTIMATE_ERROR_BOUND


@click.group()
def profiles() -> None:
    """The hardware-profile registry (built-ins, EDGEPRUNE_PROFILE_PATH, or a .toml path)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def profiles_list(as_json: bool) -> None:
    """List the known profiles."""
    from edgeprune.profile import HOST_PROFILE, available_profiles, load_profile, load_profile_file

    rows = []
    found = [(name, load_profile_file(path), str(path)) for name, path in available_profiles().items()]
    for name, p, path in [*found, (HOST_PROFILE, load_profile(HOST_PROFILE), None)]:
        rows.append({
            "name": name, "family": p.family, "formats": p.formats, "precisions": p.precisions,
            "sparsity": ["structured"] + [k for k in ("nm", "unstructured") if getattr(p.sparsity, k)],
            "kernels": {c: p.kernel_class(c) for c in ("fp32", "int8")} if p.is_cpu else {},
            "description": p.description, "path": path,
        })
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "family", "formats", "precisions", "sparsity that pays")
    for r in rows:
        table.add_row(r["name"], r["family"], ", ".join(r["formats"]), ", ".join(r["precisions"]),
                      ", ".join(r["sparsity"]))
    out.print(table)


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def profiles_show(name: str, as_json: bool) -> None:
    """Show one profile (a registry name or a path to a .toml file) with its sources."""
    from edgeprune.profile import load_profile

    p = load_profile(name)
    data = p.to_dict()
    if as_json:
        emit_json(data)
        return
    out.print(f"[bold]{p.name}[/bold] ({p.family}): {p.description}")
    out.print(f"formats: {', '.join(p.formats)} (preferred: {p.preferred_format}); precisions: {', '.join(p.precisions)}")
    table = Table("quantity", "value", "source")
    table.add_row("channel multiple", f"{p.channel_multiple.value:g}", p.channel_multiple.source)
    table.add_row("memory bandwidth", f"{p.memory_bandwidth_gbs.value:g} GB/s", p.memory_bandwidth_gbs.source)
    table.add_row("memory", f"{p.memory_gb.value:g} GB", p.memory_gb.source)
    if p.cores or p.cpu_flags:
        kernels = ", ".join(f"{c} {p.kernel_class(c) or 'unknown'}" for c in ("fp32", "int8"))
        table.add_row("CPU", f"{p.cores or '?'} cores; kernels {kernels}",
                      "stated in kernels" if p.kernels else f"derived from cpu_flags: {', '.join(p.cpu_flags) or 'none'}")
    for prec, c in p.compute.items():
        sparse = f" / {c.sparse_tops:g} sparse" if c.sparse_tops else ""
        table.add_row(f"peak {prec}", f"{c.dense_tops:g} TOPS dense{sparse}", c.source)
    if p.sparsity.nm:
        table.add_row(f"{p.sparsity.nm.pattern} sparsity", f"layers >= {p.sparsity.nm.min_channels} channels", p.sparsity.nm.source)
    if p.sparsity.unstructured:
        table.add_row("unstructured sparsity", f"pays above {p.sparsity.unstructured.min_sparsity:.0%}", p.sparsity.unstructured.source)
    table.add_row("sparsity otherwise", "structured only", p.sparsity.source)
    e = p.efficiency
    table.add_row("estimator efficiency", f"compute {e.compute:g}, bandwidth {e.bandwidth:g}, {e.layer_overhead_us:g} us/layer", e.source)
    out.print(table)


@profiles.command("probe")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the profile of this machine (.toml).")
@click.option("--name", default=None, help="Profile name (default: the output file's name, which it must match).")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(0.1, 30),
              help="Time per micro-benchmark.")
@click.option("--threads", type=click.IntRange(min=1), help="Cores to probe (default: all).")
def profiles_probe(output: Path, name: str | None, seconds: float, threads: int | None) -> None:
    """Measure this machine and write a valid profile of it, estimator calibration included."""
    if output.suffix != ".toml" or output.is_dir():
        raise InputError(f"-o {output}: a profile is written to a .toml file")
    if name is not None and name != output.stem:
        raise InputError(f"--name {name!r} must match the file name {output.stem!r} (profiles are found by file name)")
    name = name or output.stem
    from edgeprune.output import check_writable

    check_writable(output)  # before the minute of measuring
    from edgeprune.probe import probe_host, write_profile

    with progress("probe peaks, bandwidth and the estimator's efficiency"):
        data = probe_host(name=name, seconds=seconds, threads=threads)
    write_profile(data, output)
    from edgeprune.probe import busy_load

    load = busy_load()
    if load is not None and load > 0.5:
        err.print(f"[yellow]warning:[/yellow] the machine was busy (load {load:.1f} per core): the calibrated "
                  "efficiency factors include that load; probe again when it is quiet")
    swing = data["efficiency"].get("swing", 1.0)
    if swing > 1 + ESTIMATE_ERROR_BOUND:  # more than the estimator's own error on models it was not fitted to
        err.print(f"[yellow]warning:[/yellow] this machine's speed swung while probed: a chain of short kernels ran "
                  f"up to {swing - 1:.0%} slower than when fastest (cores slow to wake, as a VM's can be), and a "
                  f"kernel split over the threads up to {data['efficiency'].get('stall_us', 0):g} us longer; budgets "
                  "judged on estimates from this profile are padded by it: measure on the machine instead "
                  "(--measure-here), or probe fewer --threads")
    err.print(f"wrote {output} ({data['name']}: fp32 {data['compute']['fp32']['dense_tops'] * 1e3:.1f} GFLOP/s, "
              f"int8 {data['compute']['int8']['dense_tops'] * 1e3:.1f} GOP/s, "
              f"{data['memory_bandwidth_gbs']['value']:.1f} GB/s; efficiency compute "
              f"{data['efficiency']['compute']:g}, bandwidth {data['efficiency']['bandwidth']:g}, swing {swing:g})")
