"""Real architectures, pruned structured 0.5 through the CLI: `transformers`' own and torchvision's and timm's.

Each `transformers` family is saved as a directory (random weights, tests/hf_zoo.py) and built
with `edgeprune build hf:DIR --profile x86-avx2 --strategy structured --sparsity 0.5`; the
torchvision and timm models are built as `torchvision:NAME:random` and `timm:NAME:random`
(those libraries import only in .venv-vision: `make test-vision` runs them there, and there
they must run). Through the CLI's own entry point in this process, each must export, verify
against PyTorch, and cut MACs to at most 0.45 of the dense model's.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from tests.hf_zoo import CAUSAL_LMS, ZOO, save  # noqa: E402

from conftest import library_skip_reason, run_main  # noqa: E402

FAMILIES = list(ZOO)
MAX_MACS = 0.45
# encoders lose their residual width too, so they go further
MAX_TRANSFORMER_MACS = {"bert": 0.40, "vit": 0.40}


def test_the_zoo_covers_fifteen_families():
    assert len(FAMILIES) >= 15


@pytest.mark.parametrize("family", FAMILIES)
def test_a_real_architecture_prunes_to_its_full_width(family, tmp_path, capsys):
    folder = save(family, tmp_path / family)
    code, out, err = run_main(["build", f"hf:{folder}", "--profile", "x86-avx2", "--strategy", "structured",
                               "--sparsity", "0.5", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    macs = report["model"]["macs_after"] / report["model"]["macs_before"]
    assert macs <= MAX_TRANSFORMER_MACS.get(family, MAX_MACS), f"{family}: MACs {macs:.3f}"
    assert report["artifact"]["verified"]["passed"] and report["workload"] == f"hf:{family}"
    details = report["strategy"]["details"]
    if family in CAUSAL_LMS:
        # a perplexity workload, shipped as a Hugging Face directory that reloads to the same logits
        assert report["accuracy"]["metric"] == "perplexity"
        assert report["artifact"]["hf_model"]["reload_max_abs_diff"] < 1e-4
        # block by block: hidden width, key/value groups and FFN neurons all narrowed
        assert details["hidden_width"]["after"] < details["hidden_width"]["before"]
        assert details["heads"]["after"][1] < details["heads"]["before"][1]
    else:
        # no labels: agreement with the dense model on random inputs, and the report says so
        accuracy = report["accuracy"]
        assert accuracy["metric"] == "top1_agreement_with_dense" and accuracy["baseline"] == 1.0
        assert 0.0 <= accuracy["pruned"] <= 1.0 and accuracy["inputs"] == "random (no data given)"
        heads = [g for g in details["groups"] if g.get("unit") == "head"]
        if family in ("vit", "deit", "bert", "distilbert", "roberta", "swin", "levit"):
            # LeViT's q, k and v come from one projection laid out head by head: pruned by heads too
            assert heads and all(g["heads_after"] < g["heads"] for g in heads)
        # Swin's patch merging joins four strided views of its stream along the channel: the
        # stream is pruned through the join like any other
        kept = [k for k in details["kept_whole"] if not k["reason"].startswith("output layer")]
        assert all(k["reason"].startswith("first layer") for k in kept), kept


# Common CNNs of both libraries, residual, inverted-residual with squeeze-excitation, grouped
# (RegNet) and ConvNeXt's depthwise 7x7 with LayerNorm; the architectures whose channels pass
# reshapes and shuffles are pruned in tests/test_model_specs.py.
LIBRARY_ZOO = [("torchvision", "resnet18"), ("torchvision", "mobilenet_v3_small"), ("torchvision", "regnet_y_400mf"),
               ("timm", "resnet18"), ("timm", "efficientnet_b0"), ("timm", "convnext_atto")]
# RegNet's stem is protected (first layer) and its channel group reaches into block 1's two branches
MAX_LIBRARY_MACS = {"regnet_y_400mf": 0.47}


@pytest.mark.parametrize("library,name", LIBRARY_ZOO, ids=[f"{lib}:{name}" for lib, name in LIBRARY_ZOO])
def test_a_library_model_prunes_to_its_full_width(library, name, tmp_path, capsys):
    skip = library_skip_reason(library)
    if skip is not None:
        pytest.skip(skip)
    code, out, err = run_main(["build", f"{library}:{name}:random", "--profile", "x86-avx2", "--strategy",
                               "structured", "--sparsity", "0.5", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    macs = report["model"]["macs_after"] / report["model"]["macs_before"]
    assert macs <= MAX_LIBRARY_MACS.get(name, MAX_MACS), f"{library}:{name}: MACs {macs:.3f}"
    assert report["artifact"]["verified"]["passed"] and report["workload"] == f"{library}:{name}:random"
    assert (tmp_path / "out" / "model.onnx").is_file()
