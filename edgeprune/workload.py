"""The workload contract: the one thing a user writes, and how a CLI spec loads it."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeprune.errors import InputError, first_line
from edgeprune.metric import Score, drop, score_of
from edgeprune.tasks import CAUSAL_LM, resolve_task

Inputs = tuple[torch.Tensor, ...]
Predict = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LMText:
    """What a causal-LM workload reads: the tokenizer, the window length and the text it came from.

    ``eval_tokens`` are the held-out tokens ``evaluate`` scores (``slice_tokens`` per slice
    when it scores slices); ``checkpoint`` the model directory the LM was loaded from.
    """

    tokenizer: Any
    seq_len: int
    source: str
    eval_tokens: int = 0
    slice_tokens: Mapping[str, int] = field(default_factory=dict)
    checkpoint: str | None = None


@dataclass
class Workload:
    """A model with everything edgeprune needs to prune, verify and score it.

    model: the dense PyTorch model (put into eval mode by edgeprune).
    example_inputs: one batch of inputs at the shape the device sees (batch 1 for latency).
    calibration: batches of inputs (tuples of tensors) for activation statistics,
        int8 calibration and verification; real data, not noise.
    evaluate: scores a ``predict`` callable (``predict(*inputs) -> output tensor``) so the
        same function scores the PyTorch model and the lowered artifact. It returns a number,
        or a mapping of slice name -> number (per class, per language): the key "overall" is
        then the headline metric, and without it the headline is the mean of the slices.
    finetune_data: batches of inputs for recovery by distillation (labels not needed).
    metric: what ``evaluate`` returns; ``higher_is_better`` says which way is good.
    task: ``classification`` (default), ``causal-lm`` or ``other`` (edgeprune.tasks); a model
        holding a transformers causal LM is ``causal-lm`` whatever is given.
    inputs: what the calibration and evaluation inputs are, in a sentence for the report
        (a model argument's random inputs, or the user's --data folder).
    text: a causal LM's tokenizer, window length and text (edgeprune.llm builds it).
    graph_only: the model is a torch.export program: a graph with no layer modules to narrow.
    """

    model: torch.nn.Module
    example_inputs: Sequence[torch.Tensor]
    calibration: Iterable[Sequence[torch.Tensor]] | None = None
    evaluate: Callable[[Predict], float | Mapping[str, float]] | None = None
    finetune_data: Iterable[Sequence[torch.Tensor]] | None = None
    metric: str = "accuracy"
    higher_is_better: bool = True
    name: str = "model"
    task: str | None = None
    inputs: str | None = None
    text: LMText | None = None
    graph_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise InputError(f"Workload.model must be a torch.nn.Module, got {type(self.model).__name__}")
        try:
            self.task = resolve_task(self.model, self.task)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if isinstance(self.example_inputs, torch.Tensor):
            self.example_inputs = (self.example_inputs,)
        self.example_inputs = tuple(self.example_inputs)
        if not self.example_inputs or not all(isinstance(t, torch.Tensor) for t in self.example_inputs):
            raise InputError("Workload.example_inputs must be a non-empty tuple of tensors")
        if self.calibration is not None:
            self.calibration = [_as_inputs(b, "calibration") for b in self.calibration]
            if not self.calibration:
                raise InputError("Workload.calibration is empty: give at least one batch or None")
        if self.finetune_data is not None:
            self.finetune_data = [_as_inputs(b, "finetune_data") for b in self.finetune_data]
        self.model.eval()

    @property
    def is_causal_lm(self) -> bool:
        """Whether this is a transformers causal LM: pruned block by block, shipped as a KV-cache decoder."""
        return self.task == CAUSAL_LM

    def calibration_batches(self) -> list[Inputs]:
        """Returns the calibration batches, or the example inputs when none were given."""
        return list(self.calibration) if self.calibration else [tuple(self.example_inputs)]

    def drop(self, baseline: float, value: float) -> float:
        """Returns how much worse ``value`` is than ``baseline`` (positive means worse)."""
        return drop(baseline, value, self.higher_is_better)

    def score(self, predict: Predict) -> float | None:
        """Returns the headline metric of ``evaluate(predict)`` (None when the workload has no evaluate)."""
        scored = self.score_slices(predict)
        return None if scored is None else scored.value

    def score_slices(self, predict: Predict) -> Score | None:
        """Returns ``evaluate(predict)`` as a Score: the headline and the slices (None without evaluate).

        InputError when evaluate raises or returns anything but a finite number or a non-empty
        mapping of text -> finite number: a NaN would pass every budget comparison silently
        and is not JSON.
        """
        if self.evaluate is None:
            return None
        try:
            with torch.no_grad():
                value = self.evaluate(predict)
        except InputError:
            raise
        except Exception as exc:  # the user's code can raise anything
            raise InputError(f"workload {self.name}: evaluate() failed: {first_line(exc, 200, named=True)}") from exc
        return score_of(value, f"workload {self.name}: evaluate()")

    def score_model(self, model: torch.nn.Module) -> float | None:
        """Returns the metric of a PyTorch model (the dense one, or a pruned copy)."""
        return self.score(torch_predictor(model))


def check_runs(workload: Workload) -> None:
    """Raises InputError, before any work, unless the model runs on its example inputs and calibration.

    The model's forward must run on ``example_inputs`` and on the first calibration batch
    and return a tensor (or a tuple whose first item is one, or an object with ``logits``);
    the message names the input and its shapes when it does not.
    """
    batches = [("example_inputs", tuple(workload.example_inputs))]
    if workload.calibration:
        batches.append(("calibration batch 0", tuple(workload.calibration[0])))
    outputs = []
    for what, inputs in batches:
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
        try:
            with torch.no_grad():
                out = workload.model(*inputs)
        except Exception as exc:  # the user's model can raise anything
            raise InputError(f"workload {workload.name}: the model's forward failed on {what} ({shapes}): "
                             f"{first_line(exc, 200, named=True)}") from exc
        tensor = _first_output(out)
        if tensor is None:
            raise InputError(f"workload {workload.name}: the model's forward returned {type(out).__name__} on {what}; "
                             "return a tensor, a tuple whose first item is the output, or an object with .logits")
        outputs.append((what, tensor))
    if len(outputs) == 2 and outputs[0][1].shape[1:] != outputs[1][1].shape[1:]:
        raise InputError(f"workload {workload.name}: calibration batch 0 gives output {tuple(outputs[1][1].shape)}, "
                         f"example_inputs {tuple(outputs[0][1].shape)}: calibration must have the examples' shape "
                         "but for the batch")


def _first_output(out: Any) -> torch.Tensor | None:
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    out = getattr(out, "logits", out)
    return out if isinstance(out, torch.Tensor) else None


def torch_predictor(model: torch.nn.Module) -> Predict:
    """Returns ``predict(*inputs)`` running a PyTorch model in eval mode: its first output, logits unwrapped."""
    model = model.eval()

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        out = model(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return getattr(out, "logits", out)

    return predict


def _as_inputs(batch: Any, what: str) -> Inputs:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return tuple(batch)
    raise InputError(f"Workload.{what} must hold tensors or tuples of tensors, got {type(batch).__name__}")


def load_workload_file(spec: str | Path) -> Workload:
    """Returns the Workload that ``path/to/file.py[:function]`` builds (default ``workload``)."""
    text = str(spec)
    path_text, _, func_name = text.partition(":") if not _is_windows_drive(text) else (text, "", "")
    func_name = func_name or "workload"
    path = Path(path_text)
    if path.suffix != ".py":
        raise InputError(f"model spec must be a Python file (path/to/file.py[:function]), got {text!r}")
    if not path.is_file():
        raise InputError(f"workload file not found: {path}")
    module_name = f"edgeprune_workload_{abs(hash(path.resolve()))}"
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # a workload may import helper modules that sit beside it
    try:
        try:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        except InputError:
            raise
        except Exception as exc:  # a user's file can raise anything; report it in one line
            raise InputError(f"workload file {path} failed to load: {first_line(exc, 200, named=True)}") from exc
        func = getattr(module, func_name, None)
        if not callable(func):
            raise InputError(f"{path} has no function {func_name}() returning an edgeprune.Workload")
        try:
            workload = func()
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}:{func_name}() failed: {first_line(exc, 200, named=True)}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(workload, Workload):
        raise InputError(f"{path}:{func_name}() returned {type(workload).__name__}, not an edgeprune.Workload")
    return workload


def _is_windows_drive(text: str) -> bool:
    return len(text) > 1 and text[1] == ":" and text[0].isalpha() and text.count(":") == 1
