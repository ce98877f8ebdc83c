"""What a model argument names: a workload file, or a model one argument away (``hf:DIR``, ``FILE.pt2``).

``hf:DIR`` takes a local directory that ``from_pretrained`` loads (nothing is downloaded: hf:,
timm: and torchvision: load with the network closed, edgeprune.offline):
a causal LM becomes a perplexity workload on the interpreter's own help topics (as
``causal_lm_workload``); an image or sequence classifier becomes a workload whose inputs
are random (images at the config's size, token ids within its vocabulary), scored by top-1
agreement with the dense model on held-out inputs, and named so in the report: with no
labels of the user's, agreement with the original is the only honest metric. ``data``
(``--data FOLDER``, edgeprune.data) replaces the random inputs with the user's images or
text: a classifier's inputs, a causal LM's calibration and held-out text.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from edgeprune import data as user_data
from edgeprune.errors import InputError, first_line
from edgeprune.offline import no_network
from edgeprune.program import is_program_spec, load_program_workload
from edgeprune.vocabulary import HF_PREFIX, LIBRARY_PREFIXES
from edgeprune.workload import Workload, load_workload_file, torch_predictor

AGREEMENT = "top1_agreement_with_dense"
ACCURACY = "top1_accuracy"
SEQ_LEN = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's weights


class ClassifierLogits(nn.Module):
    """A transformers classifier as ``inputs -> logits`` (pixel values or token ids)."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}).logits


def load_workload(spec: str | Path, data: str | Path | None = None) -> Workload:
    """Returns the Workload a model argument names: ``path/to/file.py[:function]``, ``hf:DIR``,
    ``timm:NAME``, ``torchvision:NAME`` or a ``torch.export`` program saved as ``FILE.pt2``
    (edgeprune.program); ``data`` is a folder of the user's images or text for all but the first."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        with no_network():
            return load_spec(text, data)
    if text.startswith(LIBRARY_PREFIXES):
        with no_network():
            return load_library_model(text, data)
    if is_program_spec(text):
        return load_program_workload(text, data)
    if data is not None:
        raise InputError(f"--data is for hf:DIR, timm:NAME, torchvision:NAME and .pt2 programs; {text} brings "
                         "its own inputs (its calibration and evaluate)")
    return load_workload_file(text)


def load_spec(text: str, data: str | Path | None = None) -> Workload:
    """Returns the Workload a model spec (``hf:DIR``) names; InputError naming what is missing."""
    folder = Path(text[len(HF_PREFIX):])
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{text}: {folder} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError(f"{text}: {config_file} is not valid JSON") from None
    if not isinstance(config, dict):
        raise InputError(f"{text}: {config_file} is not a model config (a JSON object)")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise InputError(f"{text}: {config_file}: architectures must be a list of class names, got {architectures!r:.80}")
    _check_sizes(config, config_file)
    kind = _task(architectures)
    if kind == "ForCausalLM":
        from edgeprune.llm.workload import causal_lm_workload

        return causal_lm_workload(folder, text=None if data is None else user_data.data_folder(data),
                                  name=f"hf:{folder.name}")
    if kind is None:
        raise InputError(f"{text}: architectures {architectures or 'none'} are not a causal LM, an image "
                         "classifier or a sequence classifier")
    return _classifier(folder, kind, data)


# the sizes a config states that must be positive whole numbers (transformers checks the types of
# some, on some versions, and the signs of none: a model of -2 layers would build empty)
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "vocab_size", "head_dim", "max_position_embeddings", "num_labels", "image_size", "num_channels")


def _check_sizes(config: dict, config_file: Path) -> None:
    def size(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for key in SIZES:
        value = config.get(key)
        # a model of stages states some per stage (LeViT's head counts: [4, 8, 12])
        if value is not None and not (size(value) or isinstance(value, list) and value and all(map(size, value))):
            raise InputError(f"{config_file}: {key} must be a positive whole number, got {value!r:.40}")


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


def _classifier(folder: Path, kind: str, data: str | Path | None) -> Workload:
    from edgeprune.llm.hf import from_folder, transformers

    hf = transformers()
    auto = hf.AutoModelForImageClassification if kind == "ForImageClassification" else hf.AutoModelForSequenceClassification
    model = from_folder(auto, folder, "a classifier").eval()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    if kind == "ForImageClassification":
        size = int(getattr(config, "image_size", 224))
        shape = (int(getattr(config, "num_channels", 3)), size, size)
        wrapped = ClassifierLogits(model, "pixel_values")
        names = None if data is None else user_data.labels(data, user_data.IMAGE_SUFFIXES)
        if data is None:
            inputs = torch.rand(96, *shape, generator=generator)
        else:
            inputs = user_data.load_images(data, shape, *_processor_normalization(folder))
    else:
        wrapped = ClassifierLogits(model, "input_ids")
        if data is None:
            inputs, names = torch.randint(0, int(config.vocab_size), (96, SEQ_LEN), generator=generator), None
        else:
            inputs, names = _token_rows(folder, data, hf)
    return agreement_workload(wrapped, inputs, f"hf:{folder.name}", data, names,
                              dict(getattr(config, "id2label", None) or {}))


def _processor_normalization(folder: Path) -> tuple[list[float] | None, list[float] | None]:
    """Returns the (mean, std) a saved image processor normalizes with, or (None, None)."""
    config = folder / "preprocessor_config.json"
    try:
        saved = json.loads(config.read_text()) if config.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{config} is not valid JSON") from None
    if not saved.get("do_normalize", True):
        return None, None
    return saved.get("image_mean"), saved.get("image_std")


def _token_rows(folder: Path, data: str | Path, hf) -> tuple[torch.Tensor, list[str] | None]:
    """Returns one row of SEQ_LEN token ids per non-empty line of the data's texts (truncated or
    padded), and each line's subfolder name (None where the files lie in no subfolders)."""
    from edgeprune.llm.hf import from_folder

    tokenizer = from_folder(hf.AutoTokenizer, folder, "the tokenizer --data needs")
    if len(tokenizer) <= len(tokenizer.all_special_tokens):  # no vocabulary saved: every word would be unknown
        raise InputError(f"--data needs the tokenizer of hf:{folder}, and the folder holds none "
                         "(save it there with tokenizer.save_pretrained)")
    folders = user_data.labels(data, user_data.TEXT_SUFFIXES)
    texts = user_data.load_texts(data)
    per_line = [(line, label) for text, label in zip(texts, folders or [None] * len(texts), strict=True)
                for line in text.splitlines() if line.strip()]
    lines = [line for line, _ in per_line]
    if len(lines) < user_data.MIN_INPUTS:
        raise InputError(f"--data {data}: {len(lines)} line(s) of text; at least {user_data.MIN_INPUTS} are needed, "
                         "one input a line")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [(tokenizer(line)["input_ids"] + [pad] * SEQ_LEN)[:SEQ_LEN] for line in lines]
    return torch.tensor(rows, dtype=torch.long), None if folders is None else [label for _, label in per_line]


def agreement_workload(model: nn.Module, inputs: torch.Tensor, name: str,
                       data: str | Path | None = None, names: list[str] | None = None,
                       label_names: dict[int, str] | None = None) -> Workload:
    """Returns a workload over ``inputs``, scored on the held-out ones.

    Random inputs (no ``data``): the first 32 calibrate, and the metric is top-1 agreement with
    the dense model, the only honest one without labels; the report names it. The user's data
    (``data``, the folder they came from): every other input calibrates (at most 32), and where
    the inputs' subfolders (``names``) name the model's classes (an index, or one of
    ``label_names``), the metric is top-1 accuracy against them; else agreement again.
    """
    if data is None:
        calibrate = list(range(min(32, len(inputs))))
    else:
        calibrate = list(range(0, len(inputs), 2))[:32]
    chosen = set(calibrate)
    held = [i for i in range(len(inputs)) if i not in chosen]
    calibration, heldout = inputs[calibrate], inputs[held]
    try:
        with torch.no_grad():
            logits = torch_predictor(model)(heldout)
    except Exception as exc:  # the user's model, run on inputs its config describes
        raise InputError(f"{name}: the model's forward failed on inputs of shape {tuple(heldout.shape[1:])}: "
                         f"{first_line(exc, named=True)}") from None
    targets, how = (None, "") if data is None else user_data.label_targets(names, label_names or {}, logits.shape[-1])
    reference = logits.argmax(-1) if targets is None else targets[held]

    def top1(predict) -> float:
        return float((predict(heldout).argmax(-1) == reference).float().mean())

    described = "random (no data given)" if data is None else (
        f"{len(inputs)} inputs from {data}: {len(calibrate)} calibrate, {len(held)} held out, "
        + (how if targets is not None else f"scored against the dense model ({how})"))
    return Workload(model=model, example_inputs=(inputs[:1],),
                    calibration=[(calibration[i:i + 8],) for i in range(0, len(calibration), 8)],
                    evaluate=top1, metric=AGREEMENT if targets is None else ACCURACY, higher_is_better=True,
                    name=name, inputs=described)


def load_library_model(text: str, data: str | Path | None = None) -> Workload:
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
    if data is None:
        inputs = torch.rand(96, *size, generator=torch.Generator().manual_seed(0))
    elif prefix == "timm":
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        inputs = user_data.load_images(data, size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    else:
        inputs = user_data.load_images(data, size, IMAGENET_MEAN, IMAGENET_STD)
    names = None if data is None else user_data.labels(data, user_data.IMAGE_SUFFIXES)
    return agreement_workload(model.eval(), inputs, text, data, names)


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import timm
    except Exception as exc:  # missing, or its torchvision import failing
        raise InputError(f"timm:{name} needs the timm package, which did not import: "
                         f"{first_line(exc, 200, named=True)}") from None
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # unknown name, or weights not in the local cache
        raise InputError(f"timm:{name}: {first_line(exc, 200, named=True)}"
                         + ("; its weights must be in the local cache (or use timm:NAME:random)" if pretrained else "")
                         ) from None
    return model, tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import torchvision
    except Exception as exc:  # missing, or its compiled extension not loading
        raise InputError(f"torchvision:{name} needs torchvision, which did not import: "
                         f"{first_line(exc, 200, named=True)}") from None
    try:
        if pretrained:  # torch.hub has no offline switch: the cache is looked in first
            weights = torchvision.models.get_model_weights(name).DEFAULT
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(weights.url).path).name
            if not cached.is_file():
                raise InputError(f"torchvision:{name}: its weights {cached.name} are not in the local cache "
                                 f"{cached.parent} (or use torchvision:{name}:random)")
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except InputError:
        raise
    except Exception as exc:  # unknown name, or weights that do not load
        raise InputError(f"torchvision:{name}: {first_line(exc, 200, named=True)}") from None
    return model, (3, 224, 224)
