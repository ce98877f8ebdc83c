"""Structured 0.5 on transformers' own architectures: edgeprune against Torch-Pruning, side by side.

Each family of tests/hf_zoo.py (random weights, small widths, nothing downloaded) is pruned
as `edgeprune build hf:DIR --profile x86-avx2 --strategy structured --sparsity 0.5` prunes it
(the same plan and pruning stage), and by Torch-Pruning's MagnitudePruner (L2 magnitude, pruning
ratio 0.5, the output layer ignored, channels rounded to 8 as edgeprune's profile does, and
each attention's q/k/v layers given with their head count so heads go whole, as its
transformers examples do). MACs are counted by edgeprune's counter on one input; latency is
ONNX Runtime's, one thread, the dense, edgeprune and Torch-Pruning models (each exported by
the same exporter) timed in
interleaved rounds in this one process. A Torch-Pruning run that raises, breaks the forward
pass, fails to export or runs past 120 s is marked failed. Results go into
docs/benchmarks.md by hand.

    python benchmarks/zoo_structured.py               # every family
    python benchmarks/zoo_structured.py vit bert      # some
"""

from __future__ import annotations

import copy
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch_pruning as tp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import edgeprune  # noqa: E402
from edgeprune.backends.onnx_tools.export import export_onnx  # noqa: E402
from edgeprune.measure.local import measure_onnx_files  # noqa: E402
from edgeprune.profile import load_profile  # noqa: E402
from edgeprune.prune.heads import find_attention  # noqa: E402
from edgeprune.prune.roles import layer_roles  # noqa: E402
from edgeprune.search.pruning import prune_for_plan  # noqa: E402
from edgeprune.specs import load_workload  # noqa: E402
from edgeprune.stats import count_macs  # noqa: E402
from edgeprune.timing import Protocol  # noqa: E402
from tests.hf_zoo import ZOO, save  # noqa: E402

LIMIT_S = 120
PROFILE = "x86-avx2"


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout(f"over {LIMIT_S} s")


def torch_pruning(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """Returns the model pruned by Torch-Pruning's magnitude pruner at 0.5 (a copy)."""
    model = copy.deepcopy(model)
    roles = layer_roles(model, inputs)
    modules = dict(model.named_modules())
    heads = {}
    for attn in find_attention(model):
        for m in attn.parts:
            if isinstance(m, torch.nn.Linear) and m.out_features % attn.num_heads == 0 and m not in heads:
                heads[m] = attn.num_heads
    pruner = tp.pruner.MagnitudePruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=[modules[n] for n in roles.last], round_to=8, num_heads=heads,
        prune_num_heads=bool(heads), prune_head_dims=False, head_pruning_ratio=0.5 if heads else 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    with torch.no_grad():
        model(*inputs)
    return model


def latencies(paths: dict[str, Path], inputs: tuple[torch.Tensor, ...], rounds: int = 15,
              runs: int = 20) -> dict[str, float]:
    """Returns each ONNX model's median latency in ms (one thread), timed side by side in
    interleaved rounds of ``runs`` runs each (the build's own timing)."""
    protocol = Protocol(warmup_s=0.1, round_s=0.0, min_rounds=rounds, max_rounds=rounds, min_runs_per_round=runs)
    return {n: s.median_ms for n, s in measure_onnx_files(paths, list(inputs), threads=1, protocol=protocol).items()}


def main(families: list[str]) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    print("| family | edgeprune MACs | Torch-Pruning MACs | edgeprune speed-up | Torch-Pruning speed-up |")
    print("|---|---|---|---|---|")
    for family in families:
        with tempfile.TemporaryDirectory() as tmp:
            folder = save(family, Path(tmp) / family)
            workload = load_workload(f"hf:{folder}")
            inputs = tuple(workload.example_inputs)
            dense = count_macs(workload.model, inputs)
            paths = {"dense": export_onnx(workload.model, inputs, Path(tmp) / "dense.onnx")}
            try:  # the model a build prunes, exported as the other two are
                plan = edgeprune.plan(workload, PROFILE, strategy="structured", sparsity=0.5)
                ours_model = prune_for_plan(workload, plan, load_profile(PROFILE)).model
                ours = f"{count_macs(ours_model, inputs) / dense:.2f}"
                paths["edgeprune"] = export_onnx(ours_model, inputs, Path(tmp) / "edgeprune.onnx")
            except edgeprune.EdgepruneError as exc:
                ours = f"fails: {str(exc)[:80]}"
            signal.alarm(LIMIT_S)
            try:
                theirs_model = torch_pruning(workload.model, inputs)
                signal.alarm(0)
                theirs = f"{count_macs(theirs_model, inputs) / dense:.2f}"
                paths["tp"] = export_onnx(theirs_model, inputs, Path(tmp) / "tp.onnx")
            except BaseException as exc:  # noqa: BLE001 - any failure of the other tool is a result
                signal.alarm(0)
                theirs = f"fails: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ''}"
                paths.pop("tp", None)
            lat = latencies(paths, inputs)
            speed = {n: f"{lat['dense'] / lat[n]:.2f}x" if n in lat else "—" for n in ("edgeprune", "tp")}
            print(f"| {family} | {ours} | {theirs} | {speed['edgeprune']} | {speed['tp']} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(ZOO))
