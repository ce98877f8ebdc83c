"""`edgeprune llm`: a big causal LM pruned streamed from its checkpoint, and lowered to a decoder from it."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import emit_json, out, progress


@click.group()
def llm() -> None:
    """Big causal LMs on small machines: prune and lower block by block, never loading the model."""


@llm.command("prune")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the pruned checkpoint (rerun with the same flags to resume a killed run).")
@click.option("--strategy", type=click.Choice(["unstructured", "nm", "structured"]), required=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="Fraction of every width (structured) or of each projection's weights (unstructured).")
@click.option("--criterion", type=click.Choice(["wanda", "sparsegpt", "magnitude"]), default="wanda",
              show_default=True)
@click.option("--nm", default="2:4", show_default=True, help="N:M pattern for --strategy nm.")
@click.option("--text", type=click.Path(dir_okay=False, path_type=Path),
              help="UTF-8 calibration text (default: the interpreter's own pydoc_data.topics).")
@click.option("--calibration-tokens", type=click.IntRange(16, 1 << 20), default=2048, show_default=True)
@click.option("--seq-len", type=click.IntRange(8, 1 << 16), default=256, show_default=True)
@click.option("--memory-mb", type=click.FloatRange(min=1), help="Memory budget; the calibration states get a "
              "quarter of it and are memory-mapped beyond (default: half of this machine's memory).")
@click.option("--json", "as_json", is_flag=True)
def prune_cmd(source: Path, output: Path, strategy: str, sparsity: float, criterion: str, nm: str, text: Path | None,
              calibration_tokens: int, seq_len: int, memory_mb: float | None, as_json: bool) -> None:
    """Prune the causal LM checkpoint in SOURCE (a from_pretrained folder) block by block into a new one.

    Only one decoder block is in memory at a time, beside the calibration states; each pruned
    block is written as soon as it is done, so a killed run resumes where it stopped.
    """
    from edgeprune.llm.stream import prune_checkpoint
    from edgeprune.prune.config import parse_nm

    ids = calibration(source, text, calibration_tokens, seq_len)
    with progress(f"prune {source.name} ({strategy}, {criterion})") as bar:
        details = prune_checkpoint(source, output, strategy, sparsity, ids, criterion=criterion, nm=parse_nm(nm),
                                   memory_mb=memory_mb, progress=lambda r: bar(describe(r)))
    if as_json:
        emit_json(details)
        return
    out.print(f"pruned checkpoint written to {output} in {details['time_s']:.0f} s, peak memory "
              f"{details['peak_rss_bytes'] / 1e9:.2f} GB; calibration states {details['calibration']['states']}")


@llm.command("export")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the decoder (model.onnx, model.onnx.data, genai_config.json, tokenizer).")
@click.option("--quantize", type=click.Choice(["none", "int8", "int4"]), default="int4", show_default=True)
@click.option("--profile", default="host", show_default=True, help="The device the weights' blocks are chosen for.")
@click.option("--context", type=click.IntRange(16, 1 << 20), help="Positions of the rotary tables (default: the model's).")
def export_cmd(source: Path, output: Path, quantize: str, profile: str, context: int | None) -> None:
    """Lower the checkpoint in SOURCE to an ONNX Runtime GenAI decoder, reading one block at a time."""
    from edgeprune.backends.onnx_tools.decoder import write_decoder
    from edgeprune.backends.onnx_tools.genai import write_genai_config
    from edgeprune.llm.checkpoint import copy_side_files
    from edgeprune.llm.decoder import CheckpointDecoder
    from edgeprune.llm.onnx_backend import weight_only_for
    from edgeprune.profile import load_profile

    precision = "fp32" if quantize == "none" else quantize
    device = load_profile(profile)
    with progress(f"lower {source.name} to a {precision} decoder"):
        decoder = CheckpointDecoder(source, context)
        files = write_decoder(decoder, output, precision, weight_only_for(device, precision))
        write_genai_config(output, decoder.shape)
        copy_side_files(source, output)
    out.print(f"decoder written to {output}: {(files.model.stat().st_size + files.data.stat().st_size) / 1e6:.0f} MB")


def calibration(source: Path, text: Path | None, tokens: int, seq_len: int) -> list:
    """Returns calibration windows of token ids: the text through the checkpoint's own tokenizer."""
    import torch

    from edgeprune.errors import InputError
    from edgeprune.llm.hf import from_folder, transformers
    from edgeprune.llm.text import pydoc_corpus, read_text

    tokenizer = from_folder(transformers().AutoTokenizer, source, "the tokenizer")
    corpus = pydoc_corpus()[0] if text is None else read_text(text)
    ids = tokenizer(corpus, add_special_tokens=False, verbose=False)["input_ids"][:tokens]
    if len(ids) < seq_len:
        raise InputError(f"the calibration text gives {len(ids)} tokens, fewer than one window of {seq_len}")
    return [torch.tensor(ids[i:i + seq_len]).unsqueeze(0) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def describe(report: dict) -> str:
    """Returns one progress line: the phase, block k of N, tokens a second, time left, peak memory."""
    rate = f", {report['tokens_per_s']:.0f} tokens/s" if report.get("tokens_per_s") else ""
    return (f"{report['phase']}: block {report['block']} of {report['blocks']}{rate}, about "
            f"{report['left_s'] / 60:.0f} min left, peak memory {report['peak_rss_bytes'] / 1e9:.2f} GB")
