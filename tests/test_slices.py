"""Slices of the metric: reported per slice, gated on the worst one, honoured by the search, bad ones refused."""

import json

import pytest
import torch
from tiny_workload import workload as tiny_workload

import edgeprune
from edgeprune.errors import InputError
from edgeprune.metric import score_of

from conftest import DIGITS, run_cli
from examples_digits import per_class_accuracy_of_onnx


def test_the_digits_build_reports_each_class_and_names_the_worst(digits_build):
    _, out, report = digits_build
    acc = report["accuracy"]
    assert acc["overall"] == "given"  # digits returns "overall" beside the classes: the headline is not a slice
    assert [s["name"] for s in acc["slices"]] == [f"digit {d}" for d in range(10)]
    by_class = per_class_accuracy_of_onnx(out / "model.onnx")  # computed without edgeprune
    for s in acc["slices"]:
        assert abs(s["value"] - by_class[s["name"]]) < 1e-9
        assert s["drop"] == round(s["baseline"] - s["value"], 6)
    assert acc["worst_slice"] == max(acc["slices"], key=lambda s: s["drop"])["name"]
    markdown = (out / "report.md").read_text()
    assert "| slice | dense | built | drop |" in markdown and "| digit 9 |" in markdown


def test_a_slice_that_drops_more_than_the_budget_fails_the_build_naming_the_class(tmp_path):
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "--strategy", "structured", "--sparsity", "0.5",
                   "--quantize", "none", "--max-slice-drop", "0.01", "-o", str(tmp_path / "b"), "--json")
    assert proc.returncode == 3, proc.stderr
    acc = json.loads(proc.stdout)["accuracy"]
    # the overall accuracy fell, so some class has at least one more miss: 1/46 or more of it, above 0.01
    assert acc["drop"] > 0
    worst = max(acc["slices"], key=lambda s: s["drop"])
    assert worst["drop"] > 0.01 and acc["worst_slice"] == worst["name"]
    budget = {b["name"]: b for b in json.loads(proc.stdout)["budgets"]}["slice_drop"]
    assert budget == {"name": "slice_drop", "limit": 0.01, "value": worst["drop"], "met": False,
                      "slice": worst["name"]}
    assert f"slice '{worst['name']}'" in proc.stderr.strip().splitlines()[-1]


def test_the_search_does_not_choose_a_candidate_whose_worst_slice_misses_the_budget(tmp_path):
    # The size search of test_search.py (its candidates come from the shared cache when it ran first): 2 MB
    # in fp32 takes about 35% of the channels, which before recovery costs a few images, and any one
    # image more missed in a class is a drop of 1/46 or more there, above the 0.01 allowed here.
    proc = run_cli("build", str(DIGITS), "--profile", "x86-avx2", "--max-size-mb", "2.0", "--quantize", "none",
                   "--max-slice-drop", "0.01", "--recover", "10", "-o", str(tmp_path / "s"), "--json")
    assert proc.returncode in (0, 3), proc.stderr
    report = json.loads(proc.stdout)
    scored = [c for c in report["search"]["candidates"] if c["metric"] is not None]
    # the least-pruned candidate that meets the size budget, scored before any recovery, misses only the slice budget
    first = scored[0]
    assert first["recovered_steps"] == 0 and first["drop"] > 0
    assert first["worst_slice_drop"] > 0.01 and first["misses"] == ["slice_drop"]
    assert all("slice_drop" in c["misses"] for c in scored if c["worst_slice_drop"] > 0.01)
    budget = {b["name"]: b for b in report["budgets"]}["slice_drop"]
    if proc.returncode == 0:  # recovery brought every class back: the recovered one was chosen, not the first
        assert any("recovery steps" in r for r in report["strategy"]["reasons"])
        assert budget["met"] and budget["value"] <= 0.01
    else:
        assert report["search"]["chosen"] is None and not budget["met"] and "slice_drop" in proc.stderr


def _distance_workload() -> edgeprune.Workload:
    """The tiny CNN scored by how far its outputs move from the dense model's, per half of the inputs: lower is better."""
    work = tiny_workload()
    x = work.calibration[0][0]
    with torch.no_grad():
        reference = work.model(x).clone()

    def evaluate(predict):
        out = predict(x)
        return {"first half": float(((out[:2] - reference[:2]) ** 2).mean()),
                "second half": float(((out[2:] - reference[2:]) ** 2).mean())}

    work.evaluate, work.metric, work.higher_is_better = evaluate, "output mse", False
    return work


def test_a_lower_is_better_slice_drops_when_it_rises(tmp_path):
    report = edgeprune.build(_distance_workload(), "x86-avx2", output=tmp_path / "lower", strategy="structured",
                             sparsity=0.5, quantize="none", max_slice_drop=1e-9)
    acc = report.accuracy
    assert acc.higher_is_better is False and acc.overall == "mean of slices"
    values = {s.name: s.value for s in acc.slices}
    assert all(s.baseline == 0.0 and s.value > 0 and s.drop == round(s.value, 6) for s in acc.slices)
    assert acc.worst_slice == max(values, key=values.get)  # the slice whose distance rose most
    assert abs(acc.pruned - sum(values.values()) / 2) < 1e-12 and acc.drop > 0
    assert not report.passed and {b.name: b for b in report.budgets}["slice_drop"].slice == acc.worst_slice


@pytest.mark.parametrize("returned, says", [
    ({}, "empty mapping"),
    ({"digit 0": 1.0, 3: 0.5}, "slice key 3"),
    ({"digit 0": 1.0, "": 0.5}, "slice key ''"),
    ({"digit 0": float("nan")}, "['digit 0'] returned nan"),
    ({"digit 0": "high"}, "['digit 0'] must be a number"),
    ({"overall": float("inf"), "a": 1.0}, "['overall'] returned inf"),
])
def test_bad_slice_mappings_are_one_line_input_errors(returned, says):
    with pytest.raises(InputError) as raised:
        score_of(returned, "evaluate()")
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_a_bad_slice_mapping_exits_2_in_one_line_before_any_work(tmp_path):
    spec = tmp_path / "bad_slices.py"
    tests = str(DIGITS.parent.parent / "tests")
    spec.write_text(f"import sys\nsys.path.insert(0, {tests!r})\nfrom tiny_workload import workload as tiny\n"
                    "def workload():\n    w = tiny()\n    w.evaluate = lambda predict: {'a': 1.0, 'b': float('nan')}\n"
                    "    return w\n")
    proc = run_cli("build", str(spec), "--profile", "x86-avx2", "--strategy", "none", "-o", str(tmp_path / "o"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "evaluate()['b'] returned nan" in errors[0] and not (tmp_path / "o").exists()


def test_a_slice_budget_on_a_single_number_is_bad_input_before_any_work(tmp_path):
    work = tiny_workload()
    work.evaluate = lambda predict: float(predict(work.calibration[0][0]).abs().mean())
    with pytest.raises(InputError, match="returns a single number"):
        edgeprune.build(work, "x86-avx2", output=tmp_path / "o", strategy="structured", sparsity=0.5,
                        max_slice_drop=0.05)
    assert not (tmp_path / "o").exists()


def test_slices_that_change_between_calls_are_bad_input(tmp_path):
    work = tiny_workload()
    calls = []

    def evaluate(predict):
        calls.append(1)
        return {"a": 1.0, "b": 1.0} if len(calls) == 1 else {"a": 1.0, "c": 1.0}

    work.evaluate = evaluate
    with pytest.raises(InputError, match="different slices"):
        edgeprune.build(work, "x86-avx2", output=tmp_path / "o", strategy="none")
