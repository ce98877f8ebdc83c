"""A `torch.export` program saved as a ``.pt2`` file, as a workload one argument away.

The program is the model's graph with its weights, not its Python modules: it runs, exports
to ONNX, quantizes, and takes unstructured or N:M sparsity (its weights are parameters like
any other), but it has no layer modules whose channels could be removed, so structured and
hybrid pruning need the nn.Module itself (a workload file). Its inputs are the example inputs
the program was exported with; with no data of the user's, the held-out inputs are random
ones of the same shapes, and the metric is top-1 agreement with the dense program (for
logits of shape (batch, classes)) or the mean cosine similarity of the outputs with the
dense program's, named so in the report. ``--data FOLDER`` (edgeprune.data) feeds a program
that takes one image batch (N, C, H, W) the user's images instead, in [0, 1] (a program states
no normalization), batched as its example input is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import InputError, first_line

SUFFIX = ".pt2"
AGREEMENT = "top1_agreement_with_dense"
SIMILARITY = "output_cosine_similarity_with_dense"
HELDOUT = 64
CALIBRATION = 16


class ProgramModule(nn.Module):
    """An exported program as an nn.Module: its graph module runs the forward pass.

    An exported graph has no train or eval mode of its own (it was captured in one), so
    ``train()`` and ``eval()`` only set this wrapper's flag.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ProgramModule:
        self.training = mode
        return self

    def forward(self, *inputs: torch.Tensor):
        return self.program(*inputs)


def is_program_spec(text: str) -> bool:
    return text.endswith(SUFFIX)


def load_program_workload(text: str, data: str | Path | None = None):
    """Returns the Workload of the ``.pt2`` file ``text`` (on the images in ``data`` if given);
    InputError for a file that is not one."""
    from edgeprune.workload import Workload, torch_predictor

    path = Path(text)
    if not path.is_file():
        raise InputError(f"exported program not found: {path}")
    export_log = logging.getLogger("torch.export")  # it logs its own traceback before raising: ours is one line
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a file torch.export cannot read: whatever it raises
        raise InputError(f"{path} is not a torch.export program: {first_line(exc, 200, named=True)}") from None
    finally:
        export_log.setLevel(level)
    args, kwargs = program.example_inputs or ((), {})
    if kwargs or not args or not all(isinstance(t, torch.Tensor) for t in args):
        raise InputError(f"{path}: the program must have been exported with positional tensor example inputs "
                         "(torch.export.export(model, (x,)))")
    shared = [(i, j) for j, b in enumerate(args) for i, a in enumerate(args[:j]) if a.numel() and a.data_ptr() == b.data_ptr()]
    if shared:  # torch.export merged them into one graph input: its artifact would take fewer inputs than it
        raise InputError(f"{path}: the program was exported with one tensor passed as inputs {shared[0][0]} and "
                         f"{shared[0][1]}; export it with a tensor of its own for each (x, x.clone())")
    model = ProgramModule(program.module())
    if data is None:
        generator = torch.Generator().manual_seed(0)
        samples = [tuple(_like(t, generator) for t in args) for _ in range(CALIBRATION + HELDOUT)]
        split, inputs = CALIBRATION, "random, shaped as the example inputs (no data given)"
    else:
        samples = _image_batches(path, args, data)
        split = min(CALIBRATION, len(samples) // 2)
        inputs = (f"{sum(len(s[0]) for s in samples)} images from {data} in batches of {len(samples[0][0])}: "
                  f"{split} batches calibrate, {len(samples) - split} held out")
    calibration, heldout = samples[:split], samples[split:]
    predict_dense = torch_predictor(model)
    try:
        with torch.no_grad():
            reference = [predict_dense(*s) for s in heldout]
    except Exception as exc:  # the program's own guards (shapes, dtypes) or ops
        raise InputError(f"{path}: the program failed on inputs like its example inputs: "
                         f"{first_line(exc, 200, named=True)}") from None
    if not isinstance(reference[0], torch.Tensor):
        raise InputError(f"{path}: the program returns {type(reference[0]).__name__}; edgeprune takes programs "
                         "whose forward returns one tensor (export a wrapper that returns the logits)")
    classes = reference[0].dim() == 2 and reference[0].shape[-1] > 1
    metric = AGREEMENT if classes else SIMILARITY

    def evaluate(predict) -> float:
        scores = []
        for sample, ref in zip(heldout, reference, strict=True):
            out = predict(*sample)
            if classes:
                scores.append(float((out.argmax(-1) == ref.argmax(-1)).float().mean()))
            else:
                scores.append(float(torch.nn.functional.cosine_similarity(out.flatten().float(),
                                                                          ref.flatten().float(), dim=0)))
        return sum(scores) / len(scores)

    return Workload(model=model, example_inputs=tuple(args), calibration=calibration, evaluate=evaluate,
                    metric=metric, higher_is_better=True, name=path.stem,
                    inputs=inputs, graph_only=True)


def _image_batches(path: Path, args: tuple, data: str | Path) -> list[tuple[torch.Tensor]]:
    """Returns the folder's images as batches shaped like the program's one (N, C, H, W) input."""
    from edgeprune.data import load_images

    shape = tuple(args[0].shape)
    if len(args) != 1 or len(shape) != 4 or not args[0].is_floating_point():
        raise InputError(f"--data {data}: {path} takes {[tuple(a.shape) for a in args]}; a folder of images "
                         "feeds a program of one (N, C, H, W) float input")
    images = load_images(data, shape[1:]).to(args[0].dtype)
    batch = shape[0]
    batches = [(images[i:i + batch],) for i in range(0, len(images) - batch + 1, batch)]
    if len(batches) < 2:
        raise InputError(f"--data {data}: {len(images)} images make {len(batches)} batch(es) of {batch}, the "
                         "program's batch; at least 2 are needed, one to calibrate and one held out")
    return batches


def _like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if t.is_floating_point():
        return torch.rand(t.shape, generator=generator, dtype=t.dtype)
    high = max(int(t.max()) + 1, 2) if t.numel() else 2
    return torch.randint(0, high, t.shape, generator=generator, dtype=t.dtype)
