"""What a model argument names: a workload file, or a model one argument away (``hf:DIR``, ``FILE.pt2``).

``hf:DIR`` takes a local directory that ``from_pretrained`` loads (nothing is downloaded):
a causal LM becomes a perplexity workload on the interpreter's own help topics (as
``causal_lm_workload``); an image or sequence classifier becomes a workload whose inputs
are random (images at the config's size, token ids within its vocabulary), scored by top-1
agreement with the dense model on held-out inputs, and named so in the report: with no
data of the user's, agreement with the original is the only honest metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.program import is_program_spec, load_program_workload
from edgeprune.vocabulary import HF_PREFIX, LIBRARY_PREFIXES
from edgeprune.workload import Workload, load_workload_file, torch_predictor

AGREEMENT = "top1_agreement_with_dense"
SEQ_LEN = 32


class ClassifierLogits(nn.Module):
    """A transformers classifier as ``inputs -> logits`` (pixel values or token ids)."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}).logits


def load_workload(spec: str | Path) -> Workload:
    """Returns the Workload a model argument names: ``path/to/file.py[:function]``, ``hf:DIR`` or a
    ``torch.export`` program saved as ``FILE.pt2`` (edgeprune.program)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return load_spec(text)
    if is_program_spec(text):
        return load_program_workload(text)
    if text.startswith(LIBRARY_PREFIXES):
        return load_library_model(text)
    return load_workload_file(text)


def load_spec(text: str) -> Workload:
    """Returns the Workload a model spec (``hf:DIR``) names; InputError naming what is missing."""
    folder = Path(text[len(HF_PREFIX):])
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{text}: {folder} is not a Hugging Face model directory (no config.json)")
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise InputError(f"{text}: {config_file} is not valid JSON") from None
    kind = _task(architectures)
    if kind == "ForCausalLM":
        from edgeprune.llm.workload import causal_lm_workload

        return causal_lm_workload(folder, name=f"hf:{folder.name}")
    if kind is None:
        raise InputError(f"{text}: architectures {architectures or 'none'} are not a causal LM, an image "
                         "classifier or a sequence classifier")
    return _classifier(folder, kind)


def _task(architectures: list[str]) -> str | None:
    """Returns which of the tasks hf:DIR serves the saved architecture class is for, or None.

    transformers' own task tables decide (GPT-2's causal LM is ``GPT2LMHeadModel``); a class
    they do not list is judged by the usual suffixes.
    """
    from edgeprune.llm.hf import transformers

    transformers()
    from transformers.models.auto import modeling_auto as auto

    tables = {"ForCausalLM": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
              "ForImageClassification": auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
              "ForSequenceClassification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES}
    for name in architectures:
        for kind, table in tables.items():
            if name in table.values() or name.endswith(kind):
                return kind
    return None


def _classifier(folder: Path, kind: str) -> Workload:
    from edgeprune.llm.hf import transformers

    hf = transformers()
    auto = hf.AutoModelForImageClassification if kind == "ForImageClassification" else hf.AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(str(folder)).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load hf:{folder}: {str(exc).splitlines()[0]}") from None
    config = model.config
    generator = torch.Generator().manual_seed(0)
    if kind == "ForImageClassification":
        size = int(getattr(config, "image_size", 224))
        inputs = torch.rand(96, int(getattr(config, "num_channels", 3)), size, size, generator=generator)
        wrapped = ClassifierLogits(model, "pixel_values")
    else:
        inputs = torch.randint(0, int(config.vocab_size), (96, SEQ_LEN), generator=generator)
        wrapped = ClassifierLogits(model, "input_ids")
    return agreement_workload(wrapped, inputs, f"hf:{folder.name}", {"hf_path": str(folder)})


def agreement_workload(model: nn.Module, inputs: torch.Tensor, name: str, extras: dict) -> Workload:
    """Returns a workload over random ``inputs`` (the first 32 calibrate, the rest are held out),
    scored by top-1 agreement with the dense model: with no data of the user's, agreement with
    the original is the only honest metric, and the report names it."""
    calibration, heldout = inputs[:32], inputs[32:]
    try:
        with torch.no_grad():
            reference = torch_predictor(model)(heldout).argmax(-1)
    except Exception as exc:  # the user's model, run on inputs its config describes
        raise InputError(f"{name}: the model's forward failed on inputs of shape {tuple(heldout.shape[1:])}: "
                         f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None

    def agreement(predict) -> float:
        return float((predict(heldout).argmax(-1) == reference).float().mean())

    return Workload(model=model, example_inputs=(inputs[:1],),
                    calibration=[(calibration[i:i + 8],) for i in range(0, len(calibration), 8)],
                    evaluate=agreement, metric=AGREEMENT, higher_is_better=True, name=name,
                    extras={**extras, "inputs": "random (no data given)"})


def load_library_model(text: str) -> Workload:
    """Returns the workload of ``timm:NAME`` or ``torchvision:NAME`` (``:random`` for random weights).

    Pretrained weights come only from the library's own local cache (the download hubs are
    switched off while loading): a model whose weights are not cached is bad input, exit 2.
    """
    prefix, _, rest = text.partition(":")
    name, _, init = rest.partition(":")
    if not name or init not in ("", "random"):
        raise InputError(f"{text}: expected {prefix}:NAME or {prefix}:NAME:random")
    pretrained = init != "random"
    model, size = _timm(name, pretrained) if prefix == "timm" else _torchvision(name, pretrained)
    inputs = torch.rand(96, *size, generator=torch.Generator().manual_seed(0))
    return agreement_workload(model.eval(), inputs, text, {"library": prefix, "pretrained": pretrained})


def _offline():
    import os

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TORCH_HUB_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    return saved


def _restore(saved: dict) -> None:
    import os

    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import timm
    except Exception as exc:  # missing, or its torchvision import failing
        raise InputError(f"timm:{name} needs the timm package, which did not import: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    saved = _offline()
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # unknown name, or weights not in the local cache
        raise InputError(f"timm:{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                         + ("; its weights must be in the local cache (or use timm:NAME:random)" if pretrained else "")
                         ) from None
    finally:
        _restore(saved)
    return model, tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import torchvision
    except Exception as exc:  # missing, or its compiled extension not loading
        raise InputError(f"torchvision:{name} needs torchvision, which did not import: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    saved = _offline()
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except Exception as exc:  # unknown name, or weights not in the local cache
        raise InputError(f"torchvision:{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                         + ("; its weights must be in the local cache (or use torchvision:NAME:random)"
                            if pretrained else "")) from None
    finally:
        _restore(saved)
    return model, (3, 224, 224)
