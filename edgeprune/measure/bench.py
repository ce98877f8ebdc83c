"""``edgeprune bench``: the latency of an existing artifact, here or on a device through its agent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeprune.device.local import LocalDevice
from edgeprune.device.protocol import Device
from edgeprune.errors import InputError
from edgeprune.measure.agent_client import AgentClient
from edgeprune.measurements import MEASURED, Generation, Latency
from edgeprune.profile import Profile
from edgeprune.timing import LatencyStats, Protocol
from edgeprune.uploads import UploadModel, upload_format

_NUMPY = {1: np.float32, 10: np.float16, 11: np.float64, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_}


def parse_shape(text: str) -> tuple[int, ...]:
    """Returns a shape from '1x3x224x224' (or '1,3,224,224'); InputError if it is not one."""
    parts = text.replace(",", "x").lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape must look like 1x3x224x224, got {text!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"--input-shape dimensions must be positive, got {text!r}")
    return shape


def resolve_artifact(path: Path) -> tuple[Path, list[list[int]] | None, str | None]:
    """Returns (artifact path, input shapes if a build recorded them, artifact precision).

    ``path`` is an artifact (.onnx, .mlpackage, .engine) or a build folder holding report.json.
    """
    if not path.exists():
        raise InputError(f"artifact not found: {path}")
    report_file = path / "report.json"
    if is_decoder(path):
        return path, None, None
    if path.is_dir() and path.suffix != ".mlpackage":
        if not report_file.is_file():
            raise InputError(f"{path} is neither an artifact nor a build folder (no report.json)")
        from edgeprune.report import read_report

        report = read_report(report_file)  # checked against the report schema: exit 2 for a malformed one
        recorded = Path(report.artifact["path"])
        # The folder may have moved since the build: look inside it first.
        artifact = path / recorded.name if (path / recorded.name).exists() else recorded
        if not artifact.exists():
            raise InputError(f"the build's artifact {recorded.name} is not in {path}")
        return artifact, report.latency.inputs, report.artifact.get("precision")
    return path, None, None


def is_decoder(path: Path) -> bool:
    """Returns whether a path is an LLM decoder folder (ONNX Runtime GenAI's layout)."""
    return path.is_dir() and (path / "genai_config.json").is_file()


def remote_device(device: str | None, farm: str | None, profile: Profile | None) -> Device | None:
    """Returns the agent at ``device``, or the farm file's agents (those standing for ``profile`` when given),
    or None to measure here."""
    if farm:
        from edgeprune.farm.farm import Farm
        from edgeprune.farm.file import agents_for, load_farm

        agents = load_farm(farm)
        return Farm(agents_for(agents, profile.name, farm) if profile is not None else agents, str(farm))
    return AgentClient(device) if device else None


def bench_decoder(folder: Path, device: Device | None, prompt: int, gen: int, threads: int | None,
                  repeats: int = 3) -> Generation:
    """Returns a decoder's generation figures: pp/tg tokens per second, TTFT, decode latency, peak RSS,
    measured here (a process a round) or on the device by its agent (``device``: an agent or a farm)."""
    if device is not None:
        upload = UploadModel("artifact", "decoder", folder, None, "fp32")
        reply = device.measure_generation([upload], prompt, gen, repeats, threads)
        figures, where = reply["results"]["artifact"], {"agent": reply["agent"], "threads": reply.get("threads")}
        label = reply["device"]
    else:
        from edgeprune.device.decode_loop import side_by_side
        from edgeprune.measure.local import local_device

        try:
            figures = side_by_side({"artifact": folder}, prompt, gen, threads, repeats)["artifact"]
        except RuntimeError as exc:
            raise InputError(f"{folder}: {exc}") from None
        where, label = {"threads": threads}, local_device()
    return Generation(MEASURED, label, prompt, gen, prefill_tokens_per_s=round(figures["prefill_tokens_per_s"], 3),
                      decode_tokens_per_s=round(figures["decode_tokens_per_s"], 3), ttft_ms=round(figures["ttft_ms"], 3),
                      decode_ms_median=round(figures["decode_ms_median"], 4),
                      decode_ms_p90=round(figures["decode_ms_p90"], 4), load_s=round(figures["load_s"], 3),
                      repeats=figures["repeats"], spread=round(figures["spread"], 4), runtime=figures["runtime"],
                      note=f"peak RSS {figures['peak_rss_bytes'] / 1e6:.0f} MB", **where)


def make_inputs(artifact: Path, shapes: Sequence[Sequence[int]] | None) -> list[np.ndarray]:
    """Returns random inputs of the artifact's input types at the given (or declared) shapes.

    Floats are drawn from a normal distribution; integers are zeros, a valid token or index.
    """
    declared: list[tuple[list, type]] = []
    if artifact.suffix == ".onnx":
        import onnx
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(str(artifact), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as exc:
            raise InputError(f"{artifact} is not an ONNX model: {type(exc).__name__}: {str(exc)[:200]}") from None
        inits = {i.name for i in model.graph.initializer}
        for inp in model.graph.input:
            if inp.name in inits:
                continue
            t = inp.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            declared.append((dims, _NUMPY.get(t.elem_type, np.float32)))
    if shapes is None:
        if not declared:
            raise InputError(f"give the input shapes of {artifact.name} with --input-shape (e.g. 1x3x224x224)")
        shapes = []
        for i, (dims, _) in enumerate(declared):
            # A symbolic batch dimension becomes batch 1; any other unknown needs the user.
            dims = [1 if (d is None and j == 0) else d for j, d in enumerate(dims)]
            if any(d is None for d in dims):
                raise InputError(f"input {i} of {artifact.name} has dynamic dimensions: give --input-shape")
            shapes.append(dims)
    if declared and len(shapes) != len(declared):
        raise InputError(f"{artifact.name} takes {len(declared)} inputs, {len(shapes)} --input-shape given")
    for i, (shape, (dims, _)) in enumerate(zip(shapes, declared, strict=False)):
        fixed = [d for d in dims]
        if len(shape) != len(fixed) or any(d not in (None, 0) and d != s for d, s in zip(fixed, shape, strict=False)):
            want = "x".join("?" if d in (None, 0) else str(d) for d in fixed)
            raise InputError(f"--input-shape {'x'.join(map(str, shape))} does not fit input {i} of {artifact.name} ({want})")
    rng = np.random.default_rng(0)
    arrays = []
    for i, shape in enumerate(shapes):
        dtype = declared[i][1] if declared else np.float32
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.standard_normal(tuple(shape)).astype(dtype))
        else:
            arrays.append(np.zeros(tuple(shape), dtype=dtype))
    return arrays


def bench(artifact: Path, device: Device | None = None, profile: Profile | None = None,
          input_shapes: Sequence[Sequence[int]] | None = None, baseline: Path | None = None,
          threads: int | None = None, protocol: Protocol | None = None) -> Latency:
    """Returns the latency of an artifact, measured here or on ``device`` (an agent or a farm: remote_device)."""
    path, recorded, precision = resolve_artifact(Path(artifact))
    inputs = make_inputs(path, input_shapes or recorded)
    fmt = upload_format(path)
    if baseline is not None and (not baseline.is_file() or baseline.suffix != ".onnx"):
        raise InputError(f"--baseline must be an .onnx file, got {baseline}")
    shapes = tuple(tuple(a.shape) for a in inputs)
    if device is None and fmt != "onnx":
        raise InputError(f"{path.name} cannot run on this machine: measure it on the device with --device URL")
    measurer = device if device is not None else LocalDevice(threads)
    models = [UploadModel("artifact", fmt, path, None if device else "onnxruntime", precision or "fp32")]
    if baseline is not None:
        models.append(UploadModel("baseline", "onnx", baseline, None if device else "onnxruntime", "fp32"))
    reply = measurer.measure(models, inputs, threads, protocol)
    stats = {k: LatencyStats.from_dict(v) for k, v in reply["results"].items()}
    latency = Latency.measured(stats["artifact"], reply["device"], reply["results"]["artifact"].get("runtime"),
                               stats.get("baseline"), agent=reply["agent"], threads=reply.get("threads"),
                               artifact=str(path), inputs=shapes)
    if profile is not None:
        latency = replace(latency, **_estimate_for(path, inputs, profile, latency.median_ms))
    return latency


def _estimate_for(path: Path, inputs: Sequence[np.ndarray], profile: Profile, median_ms: float) -> dict:
    """Returns the Latency fields of the estimate on the profile (and its error) for an ONNX artifact."""
    if path.suffix != ".onnx":
        return {"estimate": {"note": "the estimator reads ONNX graphs; this artifact is not one"}}
    from edgeprune.measure.estimate import estimate_onnx

    est = estimate_onnx(path, [a.shape for a in inputs], profile)
    return {"estimated_ms": round(est.ms, 4), "estimate": est.summary(),
            "estimate_error": round(est.ms / median_ms - 1, 4)}
