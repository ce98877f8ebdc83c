"""The edgeprune command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeprune.errors import EdgepruneError, InputError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeprune")
def cli() -> None:
    """Prune, quantize and lower PyTorch models for edge devices; prove and gate the result."""


# --------------------------------------------------------------------------- profiles
@cli.group()
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
            "kernels": {c: p.kernel_class(c) for c in ("fp32", "int8")} if p.family in ("x86", "arm", "custom") else {},
            "description": p.description, "path": path,
        })
    if as_json:
        _emit_json(rows)
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
        _emit_json(data)
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
@click.option("--name", default=None, help="Profile name (default: 'probed-<hostname>').")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(0.1, 30),
              help="Time per micro-benchmark.")
@click.option("--threads", type=click.IntRange(min=1), help="Cores to probe (default: all).")
def profiles_probe(output: Path, name: str | None, seconds: float, threads: int | None) -> None:
    """Measure this machine and write a valid profile of it, estimator calibration included."""
    from edgeprune.probe import probe_host, write_profile

    with _progress("probe peaks, bandwidth and the estimator's efficiency"):
        data = probe_host(name=name, seconds=seconds, threads=threads)
    write_profile(data, output)
    from edgeprune.probe import busy_load

    load = busy_load()
    if load is not None and load > 0.5:
        err.print(f"[yellow]warning:[/yellow] the machine was busy (load {load:.1f} per core): the calibrated "
                  "efficiency factors include that load; probe again when it is quiet")
    err.print(f"wrote {output} ({data['name']}: fp32 {data['compute']['fp32']['dense_tops'] * 1e3:.1f} GFLOP/s, "
              f"int8 {data['compute']['int8']['dense_tops'] * 1e3:.1f} GOP/s, "
              f"{data['memory_bandwidth_gbs']['value']:.1f} GB/s; efficiency compute "
              f"{data['efficiency']['compute']:g}, bandwidth {data['efficiency']['bandwidth']:g})")


# --------------------------------------------------------------------------- build
def _build_options(func):
    opts = [
        click.option("--profile", help="Profile name or path to a .toml profile."),
        click.option("--strategy", type=click.Choice(["auto", "none", "structured", "unstructured", "nm", "hybrid"]),
                     help="Pruning strategy (default auto)."),
        click.option("--sparsity", type=float, help="Fraction to prune, in [0, 1)."),
        click.option("--criterion", help="Importance criterion (see the README)."),
        click.option("--nm", help="N:M pattern for --strategy nm (default 2:4)."),
        click.option("--recover", type=click.IntRange(min=0), help="Distillation steps after pruning."),
        click.option("--quantize", type=click.Choice(["auto", "none", "fp16", "int8"]),
                     help="Quantization (default auto: what the profile runs fastest, tried when a budget needs it)."),
        click.option("--palettize", type=click.Choice(["4", "6", "8"]), callback=lambda _c, _p, v: int(v) if v else None,
                     help="Core ML: store weights as a 2^BITS-entry lookup table."),
        click.option("--format", "fmt", type=click.Choice(["auto", "onnx", "coreml", "tensorrt"]),
                     help="Artifact format (default auto: the profile's preferred runtime)."),
        click.option("--latency-budget-ms", type=float, help="Latency budget in ms (on --latency-stat)."),
        click.option("--latency-stat", type=click.Choice(["median", "p90"]), help="Statistic the latency budget applies to."),
        click.option("--max-size-mb", type=float, help="Artifact size budget in MB (10^6 bytes)."),
        click.option("--max-memory-mb", type=float, help="Peak memory budget in MB (weights + activations)."),
        click.option("--max-accuracy-drop", type=float, help="Largest allowed metric drop (e.g. 0.01 = 1 point)."),
        click.option("--estimate-margin", type=float, help="Margin an estimated latency must clear (default 0.2)."),
        click.option("--device", help="URL of an edgeprune agent on the device (http://HOST:PORT)."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Runtime threads when measuring here (default: the profile's cores)."),
        click.option("--measure-here", is_flag=True, default=None,
                     help="Measure on this machine even where its CPU is not the profile's (different kernels "
                          "or fewer cores); the report records it and how the machine differs."),
        click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Build folder."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _merge(spec: str, given: dict):
    """Returns BuildOptions from a model spec or target file, flags winning over target keys."""
    from edgeprune.build import BuildOptions
    from edgeprune.gate import Budgets
    from edgeprune.target import load_target

    keys: dict = {}
    if spec.endswith(".toml"):
        keys = load_target(spec)
    else:
        keys["model"] = spec
    keys.update({k: v for k, v in given.items() if v is not None})
    if not keys.get("profile"):
        raise InputError("no profile: give --profile NAME (see `edgeprune profiles list`) or a target file with profile")
    default_out = Path("out") / Path(spec.split(":")[0]).stem
    budget_keys = {
        "latency_budget_ms": "latency_ms", "latency_stat": "latency_stat", "max_size_mb": "max_size_mb",
        "max_memory_mb": "max_memory_mb", "max_accuracy_drop": "max_accuracy_drop",
        "estimate_margin": "estimate_margin",
    }
    budgets = Budgets(**{dst: _number(src, keys[src]) if src != "latency_stat" else keys[src]
                         for src, dst in budget_keys.items() if keys.get(src) is not None})
    plain = {k: v for k, v in keys.items() if k not in budget_keys}
    plain["output"] = Path(plain.get("output") or default_out)
    if "fmt" in plain:
        plain["format"] = plain.pop("fmt")
    if plain.get("sparsity") is not None:
        plain["sparsity"] = _number("sparsity", plain["sparsity"])
    if not isinstance(plain.get("measure_here", False), bool):
        raise InputError(f"measure-here must be true or false, got {plain['measure_here']!r}")
    return BuildOptions(**plain, budgets=budgets)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name.replace('_', '-')} must be a number, got {value!r}")
    return float(value)


@contextmanager
def _progress(name: str):
    start = time.perf_counter()
    with err.status(f"{name}…"):
        yield
    err.print(f"[green]✓[/green] {name} [dim]({time.perf_counter() - start:.1f} s)[/dim]")


@cli.command()
@click.argument("model_or_target")
@_build_options
def build(model_or_target: str, as_json: bool, **given) -> None:
    """Build MODEL_OR_TARGET (path/to/workload.py[:function] or targets/NAME.toml) for a profile.

    Exit codes: 0 built and every budget met; 2 bad input; 3 built but a budget was missed.
    """
    from edgeprune.build import build as run_build
    from edgeprune.report import render_markdown

    options = _merge(model_or_target, given)
    report = run_build(options, step=_progress)
    if as_json:
        _emit_json(report)
    else:
        click.echo(render_markdown(report))
        err.print(f"build written to {options.output}/")
    if not report["passed"]:
        raise SystemExit(3)


@cli.command("plan")
@click.argument("model")
@click.option("--profile", required=True, help="Profile name or path to a .toml profile.")
@click.option("--strategy", type=click.Choice(["auto", "none", "structured", "unstructured", "nm", "hybrid"]),
              default="auto", show_default=True)
@click.option("--sparsity", type=float)
@click.option("--quantize", type=click.Choice(["auto", "none", "fp16", "int8"]), default="auto", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["auto", "onnx", "coreml", "tensorrt"]), default="auto",
              show_default=True)
@click.option("--nm", default="2:4", show_default=True)
@click.option("--latency-budget-ms", type=float)
@click.option("--max-size-mb", type=float)
@click.option("--max-accuracy-drop", type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the plan's strategy object as JSON.")
def plan_cmd(model: str, profile: str, strategy: str, sparsity: float | None, quantize: str, fmt: str, nm: str,
             latency_budget_ms: float | None, max_size_mb: float | None, max_accuracy_drop: float | None,
             as_json: bool) -> None:
    """Show what a build of MODEL for a profile would do, and why, without building."""
    from edgeprune.gate import Budgets
    from edgeprune.plan import make_plan
    from edgeprune.profile import load_profile
    from edgeprune.workload import load_workload

    budgets = Budgets(latency_ms=latency_budget_ms, max_size_mb=max_size_mb, max_accuracy_drop=max_accuracy_drop)
    p = make_plan(load_workload(model), load_profile(profile), strategy, sparsity, quantize, fmt, None, nm, budgets)
    if as_json:
        _emit_json({"profile": profile, "format": p.format, "precision": p.precision,
                    "strategy": p.strategy_section(), "quantize_candidates": list(p.quantize_candidates)})
        return
    amount = f"searched in [{p.search[0]:g}, {p.search[1]:g}]" if p.search else f"{p.sparsity:g}"
    out.print(f"strategy [bold]{p.kind}[/bold]" + (f" {p.nm[0]}:{p.nm[1]}" if p.nm else "")
              + f", sparsity {amount}, format {p.format} ({p.precision}); quantization candidates: "
              + ", ".join(p.quantize_candidates))
    for reason in p.reasons:
        out.print(f"  - {reason}")


def _csv(kind: type, text: str, flag: str) -> list:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} must be a comma-separated list, got {text!r}") from None


@cli.command("sweep")
@click.argument("model")
@click.option("--profile", required=True, help="Profile name or path to a .toml profile.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for sweep.json, sweep.md and pareto.png.")
@click.option("--strategies", default="structured,unstructured,nm", show_default=True)
@click.option("--sparsities", default="0.25,0.5,0.75", show_default=True)
@click.option("--quantize", default="auto", show_default=True,
              help="Comma-separated precisions, or auto: none plus what the profile runs fastest.")
@click.option("--format", "fmt", type=click.Choice(["auto", "onnx", "coreml", "tensorrt"]), default="auto")
@click.option("--criterion", default=None)
@click.option("--no-cache", is_flag=True, help="Re-evaluate candidates even when cached.")
@click.option("--measure-here", is_flag=True,
              help="Measure on this machine even where its CPU is not the profile's (see build --help).")
@click.option("--json", "as_json", is_flag=True)
def sweep_cmd(model: str, profile: str, output: Path, strategies: str, sparsities: str, quantize: str, fmt: str,
              criterion: str | None, no_cache: bool, measure_here: bool, as_json: bool) -> None:
    """Evaluate strategies x sparsities x quantization; write the table and the Pareto plot."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeprune.candidates import CandidateEvaluator
    from edgeprune.gate import Budgets
    from edgeprune.plan import make_plan
    from edgeprune.profile import load_profile
    from edgeprune.sweep import grid, run_sweep, write_sweep
    from edgeprune.workload import load_workload

    kinds = _csv(str, strategies, "--strategies")
    bad = [k for k in kinds if k not in ("structured", "unstructured", "nm", "hybrid")]
    if bad:
        raise InputError(f"--strategies: unknown strategy {bad[0]!r} (structured, unstructured, nm, hybrid)")
    amounts = _csv(float, sparsities, "--sparsities")
    if any(not 0 < a < 1 for a in amounts):
        raise InputError("--sparsities must each be in (0, 1)")
    workload = load_workload(model)
    prof = load_profile(profile)
    plan = make_plan(workload, prof, "none", None, "auto" if quantize == "auto" else "none", fmt, criterion)
    precisions = list(plan.quantize_candidates) if quantize == "auto" else _csv(str, quantize, "--quantize")
    bad = [q for q in precisions if q not in ("none", "fp16", "int8")]
    if bad:
        raise InputError(f"--quantize: unknown precision {bad[0]!r} (none, fp16, int8)")
    candidates = grid(kinds, amounts, precisions)
    with (CandidateEvaluator(workload, prof, plan, Budgets(), criterion, use_cache=not no_cache,
                             measure_here=measure_here) as evaluator,
          Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=False) as bar):
        task = bar.add_task("sweep", total=len(candidates))

        def advance(outcome) -> None:
            bar.update(task, advance=1, description=f"sweep: {outcome.candidate.label}")

        outcomes = run_sweep(evaluator, candidates, advance)
    title = f"{workload.name} on {prof.name} ({plan.format})"
    summary = write_sweep(outcomes, output, workload.metric, workload.higher_is_better, title)
    if as_json:
        _emit_json(summary)
    else:
        click.echo((output / "sweep.md").read_text())
        err.print(f"wrote {output}/sweep.json, sweep.md, pareto.png")


@cli.command()
@click.argument("report_path", type=click.Path(path_type=Path))
@click.option("--latency-budget-ms", type=float)
@click.option("--latency-stat", type=click.Choice(["median", "p90"]), default="median", show_default=True)
@click.option("--max-size-mb", type=float)
@click.option("--max-memory-mb", type=float)
@click.option("--max-accuracy-drop", type=float)
@click.option("--estimate-margin", type=float, default=0.2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def check(report_path: Path, as_json: bool, **limits) -> None:
    """Re-check a stored report.json (or build folder) against budgets; exit 3 if one is missed.

    With no budget flags, the budgets stored in the report are checked again.
    """
    from edgeprune.gate import Budgets, check_budgets
    from edgeprune.report import read_report

    report = read_report(report_path)
    given = {k: v for k, v in limits.items() if v is not None and k not in ("latency_stat", "estimate_margin")}
    if given:
        budgets = Budgets(latency_ms=limits["latency_budget_ms"], latency_stat=limits["latency_stat"],
                          max_size_mb=limits["max_size_mb"], max_memory_mb=limits["max_memory_mb"],
                          max_accuracy_drop=limits["max_accuracy_drop"], estimate_margin=limits["estimate_margin"])
        results = check_budgets(report, budgets)
    else:
        results = report.get("budgets", [])
    verified = (report.get("artifact") or {}).get("verified", {}).get("passed", False)
    passed = verified and all(r["met"] for r in results)
    if as_json:
        _emit_json({"passed": passed, "verified": verified, "budgets": results})
    else:
        for r in results:
            mark = "[green]met[/green]" if r["met"] else "[red]MISSED[/red]"
            out.print(f"{r['name']}: {r['value']} (limit {r['limit']}) {mark}{' — ' + r['note'] if r.get('note') else ''}")
        if not verified:
            out.print("[red]artifact not verified[/red]")
        out.print("PASSED" if passed else "FAILED")
    if not passed:
        raise SystemExit(3)


@cli.command("trt-build")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Engine cache folder (default $EDGEPRUNE_CACHE_DIR/tensorrt or ~/.cache/edgeprune/tensorrt).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds this engine.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def trt_build(bundle: Path, cache_dir: Path | None, force: bool, as_json: bool) -> None:
    """Build the TensorRT engine of BUNDLE (a build's tensorrt/ folder) on this GPU.

    The engine is cached under GPU name + TensorRT version + ONNX hash, verified against the
    bundle's PyTorch reference outputs, timed, and the sparse tactics TensorRT chose are
    reported. Needs tensorrt and a CUDA GPU (exit 2 with the reason otherwise).
    """
    from edgeprune.backends.trt_bundle import read_bundle
    from edgeprune.backends.trt_engine import build_bundle, tensorrt_unavailable

    folder, spec = read_bundle(bundle)
    reason = tensorrt_unavailable()
    if reason is not None:
        raise InputError(f"cannot build the TensorRT engine here: {reason}; "
                         f"build it on the device (or run {folder / 'build_engine.sh'} there)")
    with _progress(f"build the TensorRT engine ({spec.precision})"):
        result = build_bundle(folder, spec, cache_dir, force)
    if as_json:
        _emit_json(result)
        return
    out.print(f"engine: {result['engine']} ({'from the cache' if result['cached'] else 'built'}, key {result['key']})")
    out.print(result["sparsity"])
    verified = result.get("verified", {})
    out.print(f"verified against PyTorch: {'passed' if verified.get('passed') else 'FAILED'} "
              f"(max abs diff {verified.get('max_abs_diff', '—')}, top-1 agreement {verified.get('agreement', '—')})")
    if "latency" in result:
        out.print(f"latency (measured, {result['latency']['device']}): median {result['latency']['median_ms']:.4g} ms")
    if not verified.get("passed"):
        raise SystemExit(3)


# --------------------------------------------------------------------------- bench
@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", help="URL of an edgeprune agent on the device (default: measure on this machine).")
@click.option("--profile", help="Also estimate the latency on this profile (name or .toml path).")
@click.option("--input-shape", "input_shapes", multiple=True,
              help="Shape of an input, like 1x3x224x224; repeat for each input (default: the artifact's).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="An ONNX model to time side by side (the report's speed-up is against it).")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: all cores).")
@click.option("--quick", is_flag=True, help="A shorter timing protocol (noisier).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def bench(artifact: Path, device: str | None, profile: str | None, input_shapes: tuple[str, ...],
          baseline: Path | None, threads: int | None, quick: bool, as_json: bool) -> None:
    """Time ARTIFACT (.onnx, .mlpackage, .engine, or a build folder) here or on a device."""
    from edgeprune.measure.bench import bench as run_bench
    from edgeprune.measure.bench import parse_shape
    from edgeprune.measure.protocol import Protocol
    from edgeprune.profile import load_profile

    shapes = [parse_shape(s) for s in input_shapes] or None
    prof = load_profile(profile) if profile else None
    where = f"on {device}" if device else "here"
    with _progress(f"time {artifact.name} {where}"):
        result = run_bench(artifact, device, prof, shapes, baseline, threads, Protocol.quick() if quick else None)
    if as_json:
        _emit_json(result)
        return
    out.print(f"{result['artifact']} on {result['device']} ({result.get('runtime') or 'onnxruntime'}): "
              f"median {result['median_ms']:.4g} ms, p90 {result['p90_ms']:.4g} ms over {result['runs']} runs, "
              f"spread {result['spread']:.1%}")
    if "speedup" in result:
        out.print(f"baseline median {result['baseline_median_ms']:.4g} ms: speed-up {result['speedup']:.3g}x")
    if result.get("estimated_ms") is not None:
        out.print(f"estimated on {prof.name}: {result['estimated_ms']:.4g} ms "
                  f"({result['estimate_error']:+.0%} against this measurement)")


# --------------------------------------------------------------------------- agent
@cli.group()
def agent() -> None:
    """The device agent: runs on the device and times the artifacts builds upload to it."""


@agent.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; loopback by default (0.0.0.0 serves the network).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--max-upload-mb", default=512.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest upload accepted, in MiB.")
@click.option("--queue-timeout-s", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a measurement waits for the one before it.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: all cores).")
@click.option("--name", help="A name for this device in reports (e.g. orin-nano-lab-2).")
@click.option("--idle-exit-s", default=0.0, type=click.FloatRange(min=0),
              help="Stop after this many seconds without a request (default 0: never).")
def agent_serve(host: str, port: int, max_upload_mb: float, queue_timeout_s: float, threads: int | None,
                name: str | None, idle_exit_s: float) -> None:
    """Serve measurements on this device. The secret is read from EDGEPRUNE_AGENT_TOKEN."""
    from edgeprune.measure.agent_server import AgentConfig, make_server, token_from_env

    config = AgentConfig(token=token_from_env(), max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         queue_timeout_s=queue_timeout_s, threads=threads, name=name)
    server = make_server(host, port, config)
    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: serving plain HTTP on {host}: use a trusted network or an SSH tunnel", err=True)
    click.echo(f"edgeprune agent listening on {server.url} ({server.agent.device}; "
               f"runtimes: {', '.join(f'{k} {v}' for k, v in server.agent.runtimes.items())})", err=True)
    server.serve(idle_exit_s)
    click.echo("edgeprune agent stopped", err=True)


def main() -> None:
    """Runs the CLI: one clear line and exit 2 for bad input, no tracebacks for user mistakes."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except EdgepruneError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # "[coreml]" is not markup
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # the unexpected: one line, a traceback only on request
        if os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} (set EDGEPRUNE_DEBUG=1 for a traceback)",
                  soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
