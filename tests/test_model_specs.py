"""A model one argument away: a torch.export program (.pt2), timm:NAME and torchvision:NAME."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.user_data import digit_pngs
from tests.zoo import resnet

from conftest import library_skip_reason as _skip_reason
from conftest import offline_env, run_cli, run_main


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    model, inputs = resnet()
    path = tmp_path_factory.mktemp("pt2") / "resnet.pt2"
    torch.export.save(torch.export.export(model, inputs), str(path))
    return path


@pytest.mark.parametrize("args", [["--quantize", "int8"], ["--strategy", "unstructured", "--sparsity", "0.5"]],
                         ids=["int8", "unstructured"])
def test_an_exported_program_builds_end_to_end(program, args, tmp_path, capsys):
    code, out, err = run_main(["build", str(program), "--profile", "x86-avx2", *args, "-o", str(tmp_path / "out"),
                               "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["workload"] == "resnet"
    assert report["accuracy"]["metric"] == "top1_agreement_with_dense" and report["accuracy"]["baseline"] == 1.0
    assert report["artifact"]["verified"]["passed"]
    # the artifact is what was asked for: int8 kernels in the graph, or half of every weight zero
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tmp_path / "out" / os.path.basename(report["artifact"]["path"])))
    ops = {n.op_type for n in model.graph.node}
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) >= 2]
    if "int8" in args:
        assert report["artifact"]["precision"] == "int8"
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, ops
        assert any(w.dtype == np.int8 for w in weights)
    else:
        assert report["artifact"]["precision"] == "fp32" and report["strategy"]["kind"] == "unstructured"
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
        assert 0.45 <= zeros <= 0.55, zeros
    assert (tmp_path / "out" / report["artifact"]["path"]).is_file()


def test_an_exported_program_takes_a_folder_of_images_in_its_batches(program, tmp_path, capsys):
    data = digit_pngs(tmp_path / "digits", 9)
    code, out, err = run_main(["build", str(program), "--data", str(data), "--profile", "x86-avx2", "--quantize",
                               "int8", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    batch = torch.export.load(str(program)).example_inputs[0][0].shape[0]
    batches = 9 // batch
    assert json.loads(out)["accuracy"]["inputs"] == (f"{batches * batch} images from {data} in batches of {batch}: "
                                                     f"{batches // 2} batches calibrate, {batches - batches // 2} held out")


def test_an_exported_program_is_not_pruned_structurally_and_says_why(program, tmp_path, capsys):
    code, _, err = run_main(["build", str(program), "--profile", "x86-avx2", "--strategy", "structured",
                             "--sparsity", "0.5", "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]]
    assert "torch.export program" in err
    assert not (tmp_path / "out").exists()
    # with budgets, auto planning keeps it dense and says so instead of trying structured pruning
    code, out, err = run_main(["plan", str(program), "--profile", "x86-avx2", "--latency-budget-ms", "5", "--json"],
                              capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["strategy"]["kind"] == "none" and any("no layer modules" in r for r in plan["strategy"]["reasons"])


def test_a_file_that_is_not_a_program_is_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    code, _, err = run_main(["build", str(bad), "--profile", "x86-avx2", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "is not a torch.export program" in err


@pytest.mark.skipif(_skip_reason("timm") is not None, reason=str(_skip_reason("timm")))
def test_a_timm_model_takes_a_folder_of_images(tmp_path, capsys):
    data = digit_pngs(tmp_path / "digits", 16)
    code, out, err = run_main(["build", "timm:resnet18:random", "--data", str(data), "--profile", "x86-avx2",
                               "--quantize", "int8", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["accuracy"]["metric"] == "top1_accuracy"  # subfolders 0..9: ImageNet class indices
    assert report["accuracy"]["inputs"] == f"16 inputs from {data}: 8 calibrate, 8 held out, labelled by their subfolders"
    assert report["artifact"]["verified"]["passed"]


@pytest.mark.skipif(_skip_reason("torchvision") is not None, reason=str(_skip_reason("torchvision")))
def test_int8_of_a_random_mobilenet_v3_verifies_against_pytorch(tmp_path, capsys):
    """Hard-swish, squeeze-excitation and residual adds on random weights: with S8 activations ONNX Runtime
    left adds unfused and the artifact drifted 0.21 from PyTorch; U8 activations fuse them (x86 profiles)."""
    code, out, err = run_main(["build", "torchvision:mobilenet_v3_large:random", "--profile", "x86-avx2", "--quantize",
                               "int8", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    verified = json.loads(out)["artifact"]["verified"]
    assert verified["passed"] and verified["rel_diff"] < 0.1 and verified["samples"] >= 8, verified


def test_a_library_model_that_does_not_load_is_bad_input(tmp_path, capsys):
    code, _, err = run_main(["build", "timm:", "--profile", "x86-avx2", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "timm:NAME" in err


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_models_make_no_request(library, counting_proxy, tmp_path):
    """With empty caches and the user's proxy set, pretrained weights are refused as not cached
    without a request, and random weights load: the proxy sees no connection either way."""
    reason = _skip_reason(library)
    if reason is not None:
        pytest.skip(reason)
    proxy, seen = counting_proxy
    env = offline_env(proxy, tmp_path)
    refused = run_cli("plan", f"{library}:resnet18", "--profile", "x86-avx2", env=env)
    assert refused.returncode == 2 and "local cache" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    loaded = run_cli("plan", f"{library}:resnet18:random", "--profile", "x86-avx2", env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert seen == [], f"a request went out: {seen}"


@pytest.mark.skipif(_skip_reason("torchvision") is not None, reason=str(_skip_reason("torchvision")))
def test_torchvision_vit_b_16_prunes_to_half_its_macs_and_runs():
    """torchvision's ViT reshapes its patch embedding to ``hidden_dim``, a number it holds: the
    residual stream's width is kept (the first forward that fails says so) and the MLPs inside
    its EncoderBlocks, which record a head count of their own, are pruned as channel groups."""
    import torchvision

    from edgeprune.prune import prune
    from edgeprune.prune.config import StructuredConfig
    from edgeprune.stats import model_stats

    model = torchvision.models.get_model("vit_b_16", weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = prune(model, StructuredConfig(sparsity=0.5), calibration=[(x,)], example_inputs=(x,))
    before, after = model_stats(model, (x,)), model_stats(result.model, (x,))
    assert after["macs"] <= 0.55 * before["macs"], after["macs"] / before["macs"]
    with torch.no_grad():
        assert result.model(x).shape == (1, 1000)
    kept = [k["reason"] for k in result.details["kept_whole"]]
    assert any("the width the first layers open is kept" in r for r in kept)
    assert not any("not three equal q/k/v" in r for r in kept), kept


@pytest.mark.parametrize("name", ["mobilevitv2_050", "efficientvit_b0"])
def test_timm_models_whose_couplings_cannot_all_be_pruned_keep_those_groups_whole(name):
    """MobileViTv2 has a group whose removal would empty a coupled layer, EfficientViT a fused qkv
    convolution the scorer cannot follow: each such group is kept whole (and said so), the rest pruned."""
    reason = _skip_reason("timm")
    if reason is not None:
        pytest.skip(reason)
    import timm

    from edgeprune.prune import prune
    from edgeprune.prune.config import StructuredConfig
    from edgeprune.stats import model_stats

    model = timm.create_model(name, pretrained=False).eval()
    x = torch.rand(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)), generator=torch.Generator().manual_seed(0))
    result = prune(model, StructuredConfig(sparsity=0.5), calibration=[(x,)], example_inputs=(x,))
    assert model_stats(result.model, (x,))["macs"] <= 0.45 * model_stats(model, (x,))["macs"]
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    kept = " ".join(k["reason"] for k in result.details["kept_whole"])
    assert "kept whole: " in kept, kept


# (library, model, input side, most of its MACs it may keep, what its report says it kept whole and why)
COUPLED = [
    ("torchvision", "shufflenet_v2_x1_0", 96, 0.55, "reorders or hides its channels"),  # the channel shuffle
    ("torchvision", "swin_t", 112, 0.75, "is used outside its layer"),  # attention through F.linear
    ("timm", "efficientformerv2_s0", 224, 0.45, "are not the heads of an attention module"),  # conv heads
    ("timm", "levit_128s", 224, 0.45, "changes the model's output width"),  # fused qkv pruned by heads
    ("timm", "fastvit_t8", 128, 0.45, "keeps the output width"),  # channel-multiplier convs pruned by group
]


@pytest.mark.parametrize("library,name,side,most,reason", COUPLED, ids=[c[1] for c in COUPLED])
def test_models_whose_channels_pass_reshapes_and_regrouped_convolutions_prune_and_run(library, name, side, most,
                                                                                      reason):
    """The channel is followed through each op (trace.py): a shuffled or hidden channel keeps its
    group whole, a layer whose weight is used outside it too, a fused qkv split into heads is
    pruned by whole heads, and a depthwise convolution with a channel multiplier by whole groups."""
    skip = _skip_reason(library)
    if skip is not None:
        pytest.skip(skip)
    from edgeprune.prune import prune
    from edgeprune.prune.config import StructuredConfig
    from edgeprune.stats import model_stats

    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False).eval()
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    result = prune(model, StructuredConfig(sparsity=0.5), calibration=[(x,)], example_inputs=(x,))
    ratio = model_stats(result.model, (x,))["macs"] / model_stats(model, (x,))["macs"]
    assert ratio <= most, ratio
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    kept = " ".join(k["reason"] for k in result.details["kept_whole"])
    assert reason in kept, kept
    if name == "levit_128s":  # every attention (its downsampling ones too) lost heads, none was kept whole
        from edgeprune.prune.heads import find_attention

        narrowed = {g["attention"] for g in result.details["groups"] if g["unit"] == "head" and g["heads_after"] < g["heads"]}
        assert narrowed == {a.name for a in find_attention(model)}, narrowed
