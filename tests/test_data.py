"""--data FOLDER: a model argument calibrated and scored on the user's own images or text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from edgeprune.data import load_images  # noqa: E402
from edgeprune.search.cache import inputs_fingerprint  # noqa: E402
from tests.hf_zoo import TOKENIZER, save  # noqa: E402
from tests.user_data import TEXTS, digit_pngs  # noqa: E402

from conftest import run_main  # noqa: E402


def test_images_are_read_in_path_order_resized_and_normalized(tmp_path):
    folder = digit_pngs(tmp_path / "digits", 10)
    plain = load_images(folder, (3, 16, 16))
    assert plain.shape == (10, 3, 16, 16) and 0.0 <= float(plain.min()) and float(plain.max()) <= 1.0
    assert torch.equal(plain[:, 0], plain[:, 1])  # grey scans read as RGB: equal channels
    normalized = load_images(folder, (3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(normalized, (plain - 0.5) / 0.25)
    assert load_images(folder, (1, 8, 8)).shape == (10, 1, 8, 8)


def test_an_image_classifier_is_scored_against_the_labels_its_subfolders_name(tmp_path, capsys):
    model = save("resnet", tmp_path / "resnet")  # 10 classes
    data = digit_pngs(tmp_path / "digits", 24)  # subfolders 0..9: class indices
    code, out, err = run_main(["build", f"hf:{model}", "--data", str(data), "--profile", "x86-avx2",
                               "--strategy", "structured", "--sparsity", "0.5", "-o", str(tmp_path / "out"), "--json"],
                              capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["accuracy"]["metric"] == "top1_accuracy"
    assert report["accuracy"]["inputs"] == f"24 inputs from {data}: 12 calibrate, 12 held out, labelled by their subfolders"
    assert report["artifact"]["verified"]["passed"]
    assert "inputs: 24 inputs from" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("layout, why", [
    ("flat", "no class subfolders"),
    ("named", "subfolder 'cats' is neither a class index below 10 nor one of the model's labels"),
])
def test_without_labels_the_folder_is_scored_against_the_dense_model(layout, why, tmp_path, capsys):
    model = save("resnet", tmp_path / "resnet")
    data = digit_pngs(tmp_path / "digits", 10, classes=False)
    if layout == "named":
        (data / "cats").mkdir()
        for png in sorted(data.glob("*.png")):
            png.rename(data / "cats" / png.name)
    code, out, err = run_main(["plan", f"hf:{model}", "--data", str(data), "--profile", "x86-avx2", "--json"], capsys)
    assert code == 0, err
    from edgeprune.specs import load_workload

    workload = load_workload(f"hf:{model}", data)
    assert workload.metric == "top1_agreement_with_dense"
    assert workload.inputs == f"10 inputs from {data}: 5 calibrate, 5 held out, " \
                                         f"scored against the dense model ({why})"


def test_a_text_classifier_takes_a_line_of_text_an_input(tmp_path, capsys):
    model = save("bert", tmp_path / "bert")
    data = tmp_path / "texts"
    data.mkdir()
    shutil.copy(TEXTS / "en.txt", data / "en.txt")
    lines = [line for line in (TEXTS / "en.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    # without a tokenizer in the model's folder, token ids would be guesses: bad input
    code, _, err = run_main(["build", f"hf:{model}", "--data", str(data), "--profile", "x86-avx2",
                             "-o", str(tmp_path / "o1")], capsys)
    assert code == 2 and "tokenizer" in err and not (tmp_path / "o1").exists()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, model / name)
    code, out, err = run_main(["build", f"hf:{model}", "--data", str(data), "--profile", "x86-avx2", "--strategy",
                               "unstructured", "--sparsity", "0.5", "-o", str(tmp_path / "o2"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["accuracy"]["inputs"] == f"{len(lines)} inputs from {data}: 32 calibrate, " \
                                                    f"{len(lines) - 32} held out, scored against the dense model " \
                                                    "(no class subfolders)"
    # text files in class subfolders label each of their lines (the model has 2 classes)
    labelled = tmp_path / "labelled"
    for label, lang in ((0, "en"), (1, "de")):
        (labelled / str(label)).mkdir(parents=True)
        shutil.copy(TEXTS / f"{lang}.txt", labelled / str(label) / f"{lang}.txt")
    from edgeprune.specs import load_workload

    workload = load_workload(f"hf:{model}", labelled)
    assert workload.metric == "top1_accuracy" and workload.inputs.endswith("labelled by their subfolders")
    assert 0.0 <= workload.evaluate(lambda x: workload.model(x)) <= 1.0


def test_a_causal_lm_takes_its_calibration_and_held_out_text_from_the_folder(tmp_path, capsys):
    model = save("gpt2", tmp_path / "gpt2")
    data = tmp_path / "texts"
    data.mkdir()
    for lang in ("en", "de"):
        shutil.copy(TEXTS / f"{lang}.txt", data / f"{lang}.txt")
    code, out, err = run_main(["build", f"hf:{model}", "--data", str(data), "--profile", "x86-avx2", "--strategy",
                               "unstructured", "--sparsity", "0.5", "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    accuracy = json.loads(out)["accuracy"]
    assert accuracy["metric"] == "perplexity" and accuracy["inputs"].startswith(f"text {data}: 32 calibration windows")


@pytest.mark.parametrize("case, message", [
    ("not a folder", "not a folder"),
    ("too few images", "at least 8 are needed"),
    ("an image that does not read", "cannot read image"),
    ("a workload file", "--data is for hf:DIR, timm:NAME, torchvision:NAME and .pt2 programs"),
])
def test_bad_data_is_one_line_and_exit_2(case, message, tmp_path, capsys):
    model = f"hf:{save('resnet', tmp_path / 'resnet')}"
    data = tmp_path / "data"
    if case == "not a folder":
        data.write_text("x")
    elif case == "too few images":
        digit_pngs(data, 3)
    elif case == "an image that does not read":
        digit_pngs(data, 9)
        (data / "broken.png").write_bytes(b"not a png")
    else:
        digit_pngs(data, 9)
        model = str(Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py")
    code, _, err = run_main(["build", model, "--data", str(data), "--profile", "x86-avx2", "-o",
                             str(tmp_path / "out")], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_candidate_cache_tells_calibration_inputs_apart():
    a = [(torch.zeros(2, 3),)]
    assert inputs_fingerprint(a) == inputs_fingerprint([(torch.zeros(2, 3),)])
    assert inputs_fingerprint(a) != inputs_fingerprint([(torch.ones(2, 3),)])
    assert inputs_fingerprint(a) != inputs_fingerprint([(torch.zeros(3, 2),)])


def test_a_class_folder_named_with_a_digit_that_is_not_ascii_is_no_class_index():
    """'²' and '٣' are digits to str.isdigit but not to int(): they name no class, and nothing raises."""
    from edgeprune.data import label_targets

    for name in ("²", "٣", "①"):
        targets, why = label_targets([name, "3"], {}, 10)
        assert targets is None and repr(name) in why
    targets, _ = label_targets(["3", "7"], {}, 10)
    assert targets.tolist() == [3, 7]
