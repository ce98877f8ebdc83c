"""The build commands: `build`, `plan`, `sweep` and `check`, each parsing flags, calling the API, rendering."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import csv, emit_json, err, out, progress
from edgeprune.errors import BudgetMissed
from edgeprune.gate import DEFAULT_ESTIMATE_MARGIN, missed_budgets
from edgeprune.vocabulary import AUTO, FORMATS, MAX_CONTEXT, MAX_RECOVER_STEPS, QUANTIZE, STRATEGIES

STRATEGY_CHOICE = click.Choice([AUTO, *STRATEGIES])
QUANTIZE_CHOICE = click.Choice([AUTO, *QUANTIZE])
FORMAT_CHOICE = click.Choice([AUTO, *FORMATS])


def _palettize(_ctx, _param, value):
    return int(value) if value else None


MLFLOW_HELP = ("Log the run to MLflow (pip install 'edgeprune[mlflow]'): parameters, every figure of the report "
               "as a metric, the files as artifacts. URI: file:/path, a folder, http(s)://server; without one, "
               "MLFLOW_TRACKING_URI or else ./mlruns (a file store). Give a value as --mlflow=URI.")
MLFLOW_OPTION = click.option("--mlflow", is_flag=False, flag_value="", default=None, metavar="[URI]", help=MLFLOW_HELP)


FARM_HELP = ("A farm file (devices.toml): measure on its agents that stand for the profile, each measurement on "
             "a free one; a dead agent's job moves to another (see README, Many devices).")
RAY_HELP = ("Evaluate candidates as Ray tasks (pip install 'edgeprune[ray]'): alone, a local Ray started for the run "
            "with one worker a core; --ray=ADDRESS joins an existing cluster.")
RAY_OPTION = click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                          help=RAY_HELP)


# The options of `build` and `plan`, each a target-file key too (with dashes or underscores).
DATA_HELP = ("A folder of your own images or text (.txt, one input a line for a text classifier) for "
             "calibration and evaluation of an hf:, timm: or torchvision: model or a .pt2 program, instead of "
             "random inputs.")
PLAN_OPTIONS = [
    click.option("--profile", help="Profile name or path to a .toml profile."),
    click.option("--data", metavar="FOLDER", help=DATA_HELP),
    click.option("--strategy", type=STRATEGY_CHOICE, help="Pruning strategy (default auto)."),
    click.option("--sparsity", type=float, help="Fraction to prune, in [0, 1)."),
    click.option("--criterion", help="Importance criterion (see the README)."),
    click.option("--nm", help="N:M pattern for --strategy nm (default 2:4)."),
    click.option("--recover", type=click.IntRange(0, MAX_RECOVER_STEPS),
                 help=f"Distillation steps after pruning (at most {MAX_RECOVER_STEPS:,})."),
    click.option("--quantize", type=QUANTIZE_CHOICE,
                 help="Quantization (default auto: what the profile runs fastest, tried when a budget needs it)."),
    click.option("--palettize", type=click.Choice(["4", "6", "8"]), callback=_palettize,
                 help="Core ML: store weights as a 2^BITS-entry lookup table."),
    click.option("--format", "format", type=FORMAT_CHOICE,
                 help="Artifact format (default auto: the profile's preferred runtime)."),
    click.option("--latency-budget-ms", type=float, help="Latency budget in ms (on --latency-stat)."),
    click.option("--latency-budget-ratio", type=float,
                 help="Latency budget as a fraction of the dense model's latency, both timed in this build "
                      "(0.5: at least twice as fast); on --latency-stat."),
    click.option("--latency-stat", type=click.Choice(["median", "p90"]), help="Statistic the latency budget applies to."),
    click.option("--max-size-mb", type=float, help="Artifact size budget in MB (10^6 bytes)."),
    click.option("--max-memory-mb", type=float, help="Peak memory budget in MB (weights + activations)."),
    click.option("--max-accuracy-drop", type=float, help="Largest allowed metric drop (e.g. 0.01 = 1 point)."),
    click.option("--max-slice-drop", type=float,
                 help="Largest drop any one slice of the metric may take (evaluate() returns slice -> number; "
                      "a plain number is bad input, exit 2)."),
    click.option("--estimate-margin", type=float, help="Margin an estimated latency must clear (default 0.3333: an estimate within the 25% its estimator is held to may be that far below the measurement), times 1 + the spread the probe saw (its per-kernel stall, up to its swing)."),
    click.option("--min-decode-tokens-per-s", type=float,
                 help="Causal LM: fewest tokens a second generated after the prompt (llama-bench's tg)."),
    click.option("--min-prefill-tokens-per-s", type=float,
                 help="Causal LM: fewest prompt tokens a second processed in one pass (llama-bench's pp)."),
    click.option("--max-ttft-ms", type=float, help="Causal LM: longest time to the first token after the prompt, ms."),
    click.option("--prompt-tokens", type=click.IntRange(1, MAX_CONTEXT),
                 help="Causal LM: the prompt's tokens the generation is measured after (default 512)."),
    click.option("--generate-tokens", type=click.IntRange(1, MAX_CONTEXT),
                 help="Causal LM: tokens generated one at a time after the prompt (default 128)."),
]
BUILD_OPTIONS = PLAN_OPTIONS + [
    click.option("--device", help="URL of an edgeprune agent on the device (http://HOST:PORT)."),
    click.option("--farm", metavar="FILE", help=FARM_HELP),
    RAY_OPTION,
    click.option("--threads", type=click.IntRange(min=1),
                 help="Runtime threads when measuring here (default: the profile's cores)."),
    click.option("--measure-here", is_flag=True, default=None,
                 help="Measure on this machine even where its CPU is not the profile's (different kernels "
                      "or fewer cores); the report records it and how the machine differs."),
    click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Build folder."),
    MLFLOW_OPTION,
]


def _with(options):
    def wrap(func):
        for opt in reversed(options):
            func = opt(func)
        return func

    return wrap


@click.command()
@click.argument("model_or_target")
@_with(BUILD_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def build(model_or_target: str, as_json: bool, **given) -> None:
    """Build MODEL_OR_TARGET for a profile: path/to/workload.py[:function], targets/NAME.toml,
    hf:DIR (a from_pretrained directory), model.pt2 (a torch.export program), or timm:NAME /
    torchvision:NAME (cached weights; NAME:random for random weights).

    The output folder gets the artifact, report.json, report.md and report.html (one
    self-contained page: budgets, plan, latency spread, per-layer profile).

    Exit codes: 0 built and every budget met; 2 bad input; 3 built but a budget was missed;
    130 interrupted.
    """
    from edgeprune.target import check_before_work, options_from

    options = options_from(model_or_target, given)
    check_before_work(options)  # a refused build answers before the libraries it would need are imported
    from edgeprune.pipeline import run_build
    from edgeprune.report import render_markdown

    report = run_build(options, step=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(render_markdown(report.to_dict()))
        err.print(f"build written to {options.output}/")
        for path in sorted(Path(options.output).glob("report.*")):  # report.md, report.json, and any other rendering
            click.echo(f"  {path}", err=True)
    if not report.passed:
        raise BudgetMissed(missed_budgets(report.budgets, report.verified), report)


@click.command("plan")
@click.argument("model_or_target")
@_with(PLAN_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the plan's strategy object as JSON.")
def plan_cmd(model_or_target: str, as_json: bool, **given) -> None:
    """Show what a build of MODEL_OR_TARGET for a profile would do, and why, without building."""
    from edgeprune.api import plan
    from edgeprune.target import options_from

    o = options_from(model_or_target, given, default_output=Path("."))
    p = plan(o.model, o.profile, data=o.data, strategy=o.strategy, sparsity=o.sparsity, quantize=o.quantize, format=o.format,
             criterion=o.criterion, nm=o.nm, recover=o.recover, palettize=o.palettize, budgets=o.budgets)
    if as_json:
        emit_json({"profile": o.profile, "format": p.format, "precision": p.precision,
                   "strategy": p.strategy_section(), "quantize_candidates": list(p.quantize_candidates)})
        return
    amount = f"searched in [{p.search[0]:g}, {p.search[1]:g}]" if p.search else f"{p.sparsity:g}"
    out.print(f"strategy [bold]{p.kind}[/bold]" + (f" {p.nm[0]}:{p.nm[1]}" if p.nm else "")
              + f", sparsity {amount}, format {p.format} ({p.precision}); quantization candidates: "
              + ", ".join(p.quantize_candidates))
    for reason in p.reasons:
        out.print(f"  - {reason}")


@click.command("sweep")
@click.argument("model")
@click.option("--profile", required=True, help="Profile name or path to a .toml profile.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for sweep.json, sweep.md, pareto.png and report.html.")
@click.option("--strategies", default="structured,unstructured,nm", show_default=True)
@click.option("--sparsities", default="0.25,0.5,0.75", show_default=True)
@click.option("--quantize", default="auto", show_default=True,
              help="Comma-separated precisions, or auto: none plus what the profile runs fastest.")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default=AUTO)
@click.option("--criterion", default=None)
@click.option("--data", metavar="FOLDER", help=DATA_HELP)
@click.option("--no-cache", is_flag=True, help="Re-evaluate candidates even when cached.")
@click.option("--measure-here", is_flag=True,
              help="Measure on this machine even where its CPU is not the profile's (see build --help).")
@click.option("--device", help="URL of an edgeprune agent on the device (http://HOST:PORT).")
@click.option("--farm", metavar="FILE", help=FARM_HELP)
@RAY_OPTION
@MLFLOW_OPTION
@click.option("--json", "as_json", is_flag=True)
def sweep_cmd(model: str, profile: str, output: Path, strategies: str, sparsities: str, quantize: str, fmt: str,
              criterion: str | None, data: str | None, no_cache: bool, measure_here: bool, device: str | None,
              farm: str | None, ray: str | None, mlflow: str | None, as_json: bool) -> None:
    """Evaluate strategies x sparsities x quantization; write the table, the Pareto plot and report.html.

    With --ray the candidates run as Ray tasks, as many at once as the cluster has CPUs; with
    --farm their latencies are measured on the farm's agents, each on a free one. Every result is
    cached as it arrives: a sweep run again (after Ctrl-C too) evaluates only what is missing.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeprune.api import sweep

    precisions = quantize if quantize == AUTO else csv(str, quantize, "--quantize")
    # the bar appears once the sweep knows its candidates: a refused sweep prints only its error
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=False)
    task = bar.add_task("sweep", total=None)

    def start(n: int) -> None:
        bar.update(task, total=n)
        bar.start()

    try:
        summary = sweep(model, profile, output, strategies=csv(str, strategies, "--strategies"),
                        sparsities=csv(float, sparsities, "--sparsities"), quantize=precisions, format=fmt,
                        criterion=criterion, data=data, use_cache=not no_cache, measure_here=measure_here,
                        mlflow=mlflow, device=device, farm=farm, ray=ray, total=start,
                        advance=lambda o: bar.update(task, advance=1, description=f"sweep: {o.candidate.label}"),
                        fanout=lambda f: bar.update(task, description=f"sweep: {f.line()}"))
    finally:
        bar.stop()
    if as_json:
        emit_json(summary)
    else:
        click.echo((output / "sweep.md").read_text())
        err.print(f"wrote {output}/sweep.json, sweep.md, pareto.png, report.html")


@click.command()
@click.argument("report_path", type=click.Path(path_type=Path))
@click.option("--latency-budget-ms", type=float)
@click.option("--latency-stat", type=click.Choice(["median", "p90"]), default="median", show_default=True)
@click.option("--max-size-mb", type=float)
@click.option("--max-memory-mb", type=float)
@click.option("--max-accuracy-drop", type=float)
@click.option("--latency-budget-ratio", type=float)
@click.option("--max-slice-drop", type=float)
@click.option("--min-decode-tokens-per-s", type=float)
@click.option("--min-prefill-tokens-per-s", type=float)
@click.option("--max-ttft-ms", type=float)
@click.option("--estimate-margin", type=float, default=DEFAULT_ESTIMATE_MARGIN, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def check(report_path: Path, as_json: bool, **limits) -> None:
    """Re-check a stored report.json (or build folder) against budgets; exit 3 if one is missed.

    With no budget flags, the budgets stored in the report are checked again.
    """
    from edgeprune.gate import check_budgets
    from edgeprune.report import read_report
    from edgeprune.target import budgets_from

    report = read_report(report_path)
    given = {k: v for k, v in limits.items() if v is not None and k not in ("latency_stat", "estimate_margin")}
    results = check_budgets(report.measurements(), budgets_from(limits)) if given else report.budgets
    verified = report.verified
    passed = verified and all(r.met for r in results)
    if as_json:
        emit_json({"passed": passed, "verified": verified, "budgets": [r.to_dict() for r in results]})
    else:
        for r in results:
            mark = "[green]met[/green]" if r.met else "[red]MISSED[/red]"
            out.print(f"{r.name}: {r.value} (limit {r.limit}) {mark}{' — ' + r.note if r.note else ''}")
        if not verified:
            out.print("[red]artifact not verified[/red]")
        out.print("PASSED" if passed else "FAILED")
    if not passed:
        raise BudgetMissed(missed_budgets(results, verified))
