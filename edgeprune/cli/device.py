"""Commands on or for the device: `bench` times an artifact, `agent serve` serves timings, `trt-build` builds engines."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import emit_json, out, progress
from edgeprune.errors import InputError


@click.command("trt-build")
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
    from edgeprune.backends.tensorrt.bundle import read_bundle
    from edgeprune.backends.tensorrt.engine import build_bundle, tensorrt_unavailable

    folder, spec = read_bundle(bundle)
    reason = tensorrt_unavailable()
    if reason is not None:
        raise InputError(f"cannot build the TensorRT engine here: {reason}; "
                         f"build it on the device (or run {folder / 'build_engine.sh'} there)")
    with progress(f"build the TensorRT engine ({spec.precision})"):
        result = build_bundle(folder, spec, cache_dir, force)
    if as_json:
        emit_json(result)
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
@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", help="URL of an edgeprune agent on the device (default: measure on this machine).")
@click.option("--farm", metavar="FILE", help="A farm file (devices.toml): measure on one of its agents (with "
              "--profile, one standing for that profile); a dead agent's job moves to another.")
@click.option("--profile", help="Also estimate the latency on this profile (name or .toml path).")
@click.option("--input-shape", "input_shapes", multiple=True,
              help="Shape of an input, like 1x3x224x224; repeat for each input (default: the artifact's).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="An ONNX model to time side by side (the report's speed-up is against it).")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: all cores).")
@click.option("--quick", is_flag=True, help="A shorter timing protocol (noisier).")
@click.option("--prompt-tokens", type=click.IntRange(1, 32768), default=512, show_default=True,
              help="An LLM decoder: the prompt's tokens, processed in one pass.")
@click.option("--generate-tokens", type=click.IntRange(1, 8192), default=128, show_default=True,
              help="An LLM decoder: tokens generated one at a time after the prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def bench(artifact: Path, device: str | None, farm: str | None, profile: str | None, input_shapes: tuple[str, ...],
          baseline: Path | None, threads: int | None, quick: bool, prompt_tokens: int, generate_tokens: int,
          as_json: bool) -> None:
    """Time ARTIFACT (.onnx, .mlpackage, .engine, an LLM decoder folder, or a build folder) here or on a device.

    An LLM decoder (a build's decoder/ folder) is timed generating: pp and tg tokens per
    second, time to first token, decode latency and the process's peak memory.
    """
    from edgeprune.measure.bench import bench as run_bench
    from edgeprune.measure.bench import (
        bench_decoder,
        is_decoder,
        parse_shape,
        remote_device,
        resolve_artifact,
    )
    from edgeprune.profile import load_profile
    from edgeprune.target import check_device_flags
    from edgeprune.timing import Protocol

    prof = load_profile(profile) if profile else None
    if device and farm:
        check_device_flags("", device, farm)
    resolved = resolve_artifact(artifact)[0]
    measurer = remote_device(device, farm, prof)
    where = f"on {device or farm}" if measurer is not None else "here"
    if is_decoder(resolved):
        with progress(f"generate with {resolved.name} {where}"):
            gen = bench_decoder(resolved, measurer, prompt_tokens, generate_tokens, threads, 1 if quick else 3)
        if as_json:
            emit_json(gen.to_dict())
            return
        out.print(f"{resolved} on {gen.device} ({gen.runtime}): pp{prompt_tokens} {gen.prefill_tokens_per_s:.4g}, "
                  f"tg{generate_tokens} {gen.decode_tokens_per_s:.4g} tokens/s, time to first token "
                  f"{gen.ttft_ms:.4g} ms, decode p90 {gen.decode_ms_p90:.4g} ms, {gen.note}")
        return
    shapes = [parse_shape(s) for s in input_shapes] or None
    with progress(f"time {artifact.name} {where}"):
        result = run_bench(artifact, measurer, prof, shapes, baseline, threads, Protocol.quick() if quick else None)
    if as_json:
        emit_json(result.to_dict())
        return
    out.print(f"{result.artifact} on {result.device} ({result.runtime or 'onnxruntime'}): "
              f"median {result.median_ms:.4g} ms, p90 {result.p90_ms:.4g} ms over {result.runs} runs, "
              f"spread {result.spread:.1%}")
    if result.speedup is not None:
        out.print(f"baseline median {result.baseline_median_ms:.4g} ms: speed-up {result.speedup:.3g}x")
    if result.estimated_ms is not None:
        out.print(f"estimated on {prof.name}: {result.estimated_ms:.4g} ms "
                  f"({result.estimate_error:+.0%} against this measurement)")


# --------------------------------------------------------------------------- agent
@click.group()
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
    from edgeprune.device.server import AgentConfig, make_server, token_from_env

    config = AgentConfig(token=token_from_env(), max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         queue_timeout_s=queue_timeout_s, threads=threads, name=name)
    server = make_server(host, port, config)
    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: serving plain HTTP on {host}: use a trusted network or an SSH tunnel", err=True)
    click.echo(f"edgeprune agent listening on {server.url} ({server.agent.device}; "
               f"runtimes: {', '.join(f'{k} {v}' for k, v in server.agent.runtimes.items())})", err=True)
    server.serve(idle_exit_s)
    click.echo("edgeprune agent stopped", err=True)
