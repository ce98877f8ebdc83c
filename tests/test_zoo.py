"""Real architectures from `transformers`' own configs, pruned structured 0.5 through the CLI.

Each family is saved as a directory (random weights, tests/hf_zoo.py) and built with
`edgeprune build hf:DIR --profile x86-avx2 --strategy structured --sparsity 0.5`, through the
CLI's own entry point in this process: it must export, verify against PyTorch, and cut MACs to
at most 0.45 of the dense model's.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from tests.hf_zoo import CAUSAL_LMS, ZOO, save  # noqa: E402

from conftest import run_main  # noqa: E402

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
