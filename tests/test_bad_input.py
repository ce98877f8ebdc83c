"""Bad input, tried as a new user would: each case is one line on stderr, exit 2, no traceback, nothing written.

The commands run in this process (the CLI's own ``main``), so the matrix stays fast; the
cases that need a process of their own (a killed build) are in test_faults.py.
"""

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_main

TINY = str(ROOT / "tests" / "tiny_workload.py")
BAD = ROOT / "tests" / "bad"
SHAPES = str(BAD / "shapes.py")



@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad files of every kind a user might hand over: targets, reports, models, bundles."""
    d = tmp_path_factory.mktemp("bad")
    out: dict[str, Path] = {}

    def put(name: str, text: str | bytes) -> None:
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        out[name] = path

    base = f'model = "{TINY}"\nprofile = "jetson-orin-nano"\nformat = "onnx"\n'
    for name, extra in {
        "threads_text.toml": 'threads = "many"\n', "recover_text.toml": 'recover = "lots"\n',
        "threads_negative.toml": "threads = -3\n", "unknown_key.toml": "speed = 3\n",
        "sparsity_text.toml": 'strategy = "structured"\nsparsity = "half"\n', "measure_text.toml": 'measure-here = "yes"\n',
        "palettize_5.toml": "palettize = 5\n", "budget_text.toml": 'latency-budget-ms = "fast"\n',
        "budget_inf.toml": "latency-budget-ms = inf\n", "drop_nan.toml": "max-accuracy-drop = nan\n",
        "recover_huge.toml": "recover = 1000000000000000\n", "profile_number.toml": "",
    }.items():
        put(name, (base.replace('"jetson-orin-nano"', "7") if name == "profile_number.toml" else base) + extra)
    put("syntax_error.py", "def workload(:\n")
    put("not_toml.toml", "model = \n[[[")
    put("no_model.toml", 'profile = "host"\n')
    put("truncated.onnx", b"\x08\x07\x12\x04torch\x1a")
    put("notes.txt", "not a model")
    put("not_json.json", "{ not json")
    put("array.json", "[1, 2, 3]")
    put("bad_profile.toml", 'name = "bad_profile"\nfamily = "x86"\n')
    put("other_name.toml", (ROOT / "profiles" / "x86-avx2.toml").read_text())
    (d / "not_a_build").mkdir()
    (d / "not_a_build" / "keep.txt").write_text("mine")
    out["not_a_build"] = d / "not_a_build"
    (d / "broken_build").mkdir()
    (d / "broken_build" / "report.json").write_text(json.dumps({"schema": 1, "latency": {}, "budgets": [], "artifact": 3}))
    out["broken_build"] = d / "broken_build"
    (d / "empty_dir").mkdir()
    out["empty_dir"] = d / "empty_dir"
    (d / "bundle").mkdir()
    out["bundle"] = d / "bundle"
    out["dir"] = d
    return out


def reports(digits_build, files) -> dict[str, Path]:
    report = digits_build[2]
    made = {}
    for name, change in {"passed_text": {"passed": "yes"}, "schema_3": {"schema": 3},
                         "latency_number": {"latency": 3}, "budgets_text": {"budgets": "none"},
                         "macs_negative": {"model": {**report["model"], "macs_after": -1}}}.items():
        path = files["dir"] / f"{name}.json"
        path.write_text(json.dumps({**report, **change}))
        made[name] = path
    no_latency = {k: v for k, v in report.items() if k != "latency"}
    (files["dir"] / "no_latency.json").write_text(json.dumps(no_latency))
    made["no_latency"] = files["dir"] / "no_latency.json"
    return made


B = ["build"]
OUT = ["-o", "{dir}/never"]
CASES = [
    # the workload: the user's own code
    ("forward raises", B + [str(BAD / "forward_raises.py"), "--profile", "host"] + OUT, "forward failed"),
    ("example of the wrong shape", B + [SHAPES + ":wrong_example", "--profile", "host"] + OUT, "example_inputs"),
    ("example of the wrong dtype", B + [SHAPES + ":wrong_dtype", "--profile", "host"] + OUT, "example_inputs"),
    ("calibration of the wrong shape", B + [SHAPES + ":wrong_calibration", "--profile", "host"] + OUT, "calibration batch 0"),
    ("forward returns a dict", B + [SHAPES + ":returns_dict", "--profile", "host"] + OUT, "returned dict"),
    ("evaluate returns text", B + [SHAPES + ":evaluate_string", "--profile", "host"] + OUT, "must return a number"),
    ("evaluate returns None", B + [SHAPES + ":evaluate_none", "--profile", "host"] + OUT, "must return a number"),
    ("evaluate returns NaN", B + [SHAPES + ":evaluate_nan", "--profile", "host"] + OUT, "finite"),
    ("evaluate returns inf", B + [SHAPES + ":evaluate_inf", "--profile", "host"] + OUT, "finite"),
    ("evaluate raises", B + [SHAPES + ":evaluate_raises", "--profile", "host"] + OUT, "evaluate() failed"),
    ("workload() raises", B + [SHAPES + ":fails", "--profile", "host"] + OUT, "no data here"),
    ("workload() returns no Workload", B + [SHAPES + ":not_a_workload", "--profile", "host"] + OUT, "not an edgeprune.Workload"),
    ("no such function", B + [SHAPES + ":nothing", "--profile", "host"] + OUT, "no function nothing"),
    ("syntax error", B + ["{syntax_error.py}", "--profile", "host"] + OUT, "failed to load"),
    ("missing workload file", B + ["missing.py", "--profile", "host"] + OUT, "not found"),
    ("not a Python file", B + ["{notes.txt}", "--profile", "host"] + OUT, "Python file"),
    # numbers and choices on the command line
    ("latency budget inf", B + [TINY, "--profile", "host", "--latency-budget-ms", "inf"] + OUT, "finite"),
    ("latency budget nan", B + [TINY, "--profile", "host", "--latency-budget-ms", "nan"] + OUT, "finite"),
    ("latency budget negative", B + [TINY, "--profile", "host", "--latency-budget-ms", "-1"] + OUT, "positive"),
    ("latency budget zero", B + [TINY, "--profile", "host", "--latency-budget-ms", "0"] + OUT, "positive"),
    ("size budget text", B + [TINY, "--profile", "host", "--max-size-mb", "big"] + OUT, "max-size-mb"),
    ("memory budget inf", B + [TINY, "--profile", "host", "--max-memory-mb", "inf"] + OUT, "finite"),
    ("accuracy drop nan", B + [TINY, "--profile", "host", "--max-accuracy-drop", "nan"] + OUT, "finite"),
    ("accuracy drop negative", B + [TINY, "--profile", "host", "--max-accuracy-drop", "-0.1"] + OUT, ">= 0"),
    ("slice drop negative", B + [TINY, "--profile", "host", "--max-slice-drop", "-0.1"] + OUT, ">= 0"),
    ("slice budget without evaluate", B + [TINY, "--profile", "host", "--max-slice-drop", "0.1"] + OUT, "evaluate()"),
    ("latency ratio zero", B + [TINY, "--profile", "host", "--latency-budget-ratio", "0"] + OUT, "positive"),
    ("latency ratio nan", B + [TINY, "--profile", "host", "--latency-budget-ratio", "nan"] + OUT, "finite"),
    ("estimate margin 1.5", B + [TINY, "--profile", "host", "--estimate-margin", "1.5"] + OUT, "estimate-margin"),
    ("estimate margin nan", B + [TINY, "--profile", "host", "--estimate-margin", "nan"] + OUT, "finite"),
    ("latency stat p50", B + [TINY, "--profile", "host", "--latency-stat", "p50"] + OUT, "p50"),
    ("sparsity 1.5", B + [TINY, "--profile", "host", "--strategy", "structured", "--sparsity", "1.5"] + OUT, "sparsity"),
    ("sparsity negative", B + [TINY, "--profile", "host", "--strategy", "structured", "--sparsity", "-0.1"] + OUT, "sparsity"),
    ("sparsity nan", B + [TINY, "--profile", "host", "--strategy", "structured", "--sparsity", "nan"] + OUT, "sparsity"),
    ("structured without sparsity", B + [TINY, "--profile", "host", "--strategy", "structured"] + OUT, "--sparsity"),
    ("unknown strategy", B + [TINY, "--profile", "host", "--strategy", "magic"] + OUT, "magic"),
    ("unknown format", B + [TINY, "--profile", "host", "--format", "tflite"] + OUT, "tflite"),
    ("unknown quantization", B + [TINY, "--profile", "host", "--quantize", "int4"] + OUT, "int4"),
    ("N:M with N = M", B + [TINY, "--profile", "host", "--strategy", "nm", "--nm", "4:4"] + OUT, "0 < N < M"),
    ("N:M not a pattern", B + [TINY, "--profile", "host", "--strategy", "nm", "--nm", "two"] + OUT, "N:M"),
    ("TensorRT 1:4", B + [TINY, "--profile", "jetson-orin-nano", "--format", "tensorrt", "--strategy", "nm", "--nm", "1:4"] + OUT, "2:4"),
    ("palettize 5", B + [TINY, "--profile", "iphone-15-pro", "--palettize", "5"] + OUT, "5"),
    ("palettize for ONNX", B + [TINY, "--profile", "host", "--palettize", "4"] + OUT, "palettized"),
    ("recover without fine-tuning data", B + [TINY, "--profile", "host", "--recover", "10"] + OUT, "finetune_data"),
    ("recover beyond the bound", B + [TINY, "--profile", "host", "--recover", "1000000000000000"] + OUT, "recover"),
    ("recover not a number", B + [TINY, "--profile", "host", "--recover", "lots"] + OUT, "recover"),
    ("threads zero", B + [TINY, "--profile", "host", "--threads", "0"] + OUT, "threads"),
    ("threads above the profile's cores", B + [TINY, "--profile", "x86-avx2", "--threads", "64"] + OUT, "threads"),
    ("measure here on a GPU profile", B + [TINY, "--profile", "jetson-orin-nano", "--format", "onnx", "--measure-here"] + OUT, "measure-here"),
    ("format the profile does not run", B + [TINY, "--profile", "x86-avx2", "--format", "coreml"] + OUT, "coreml"),
    ("precision the profile does not run", B + [TINY, "--profile", "x86-amx", "--quantize", "fp16"] + OUT, "fp16"),
    ("unknown profile", B + [TINY, "--profile", "nope"] + OUT, "nope"),
    ("missing profile file", B + [TINY, "--profile", "/nonexistent/p.toml"] + OUT, "p.toml"),
    ("malformed profile", B + [TINY, "--profile", "{bad_profile.toml}"] + OUT, "bad_profile"),
    ("profile whose name is not its file's", B + [TINY, "--profile", "{other_name.toml}"] + OUT, "name"),
    ("no profile", B + [TINY] + OUT, "no profile"),
    ("output is a file", B + [TINY, "--profile", "host", "-o", "{notes.txt}"], "is a file"),
    ("output under a file", B + [TINY, "--profile", "host", "-o", "{notes.txt}/sub"], "writable"),
    ("output holds something else", B + [TINY, "--profile", "host", "-o", "{not_a_build}"], "holds no edgeprune build"),
    ("device that is not there", B + [TINY, "--profile", "host", "--device", "http://127.0.0.1:9"] + OUT, "agent"),
    ("device URL that is not one", B + [TINY, "--profile", "host", "--device", "ftp://x"] + OUT, "http"),
    # target files
    ("target threads text", B + ["{threads_text.toml}"] + OUT, "threads"),
    ("target recover text", B + ["{recover_text.toml}"] + OUT, "recover"),
    ("target threads negative", B + ["{threads_negative.toml}"] + OUT, "threads"),
    ("target unknown key", B + ["{unknown_key.toml}"] + OUT, "speed"),
    ("target sparsity text", B + ["{sparsity_text.toml}"] + OUT, "sparsity"),
    ("target measure-here text", B + ["{measure_text.toml}"] + OUT, "measure-here"),
    ("target palettize 5", B + ["{palettize_5.toml}"] + OUT, "palettize"),
    ("target budget text", B + ["{budget_text.toml}"] + OUT, "latency-budget-ms"),
    ("target budget inf", B + ["{budget_inf.toml}"] + OUT, "finite"),
    ("target drop nan", B + ["{drop_nan.toml}"] + OUT, "finite"),
    ("target recover huge", B + ["{recover_huge.toml}"] + OUT, "recover"),
    ("target profile a number", B + ["{profile_number.toml}"] + OUT, "profile"),
    ("target not TOML", B + ["{not_toml.toml}"] + OUT, "TOML"),
    ("target without model", B + ["{no_model.toml}"] + OUT, "model"),
    ("target missing", B + ["missing.toml"] + OUT, "not found"),
    # plan
    ("plan unknown profile", ["plan", TINY, "--profile", "nope"], "nope"),
    ("plan unknown strategy", ["plan", TINY, "--profile", "host", "--strategy", "magic"], "magic"),
    ("plan sparsity nan", ["plan", TINY, "--profile", "host", "--strategy", "structured", "--sparsity", "nan"], "sparsity"),
    ("plan budget inf", ["plan", TINY, "--profile", "host", "--latency-budget-ms", "inf"], "finite"),
    ("plan bad target", ["plan", "{threads_text.toml}"], "threads"),
    # sweep
    ("sweep no sparsities", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--sparsities", ""], "sparsities"),
    ("sweep sparsities text", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--sparsities", "a,b"], "sparsities"),
    ("sweep sparsity 1.5", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--sparsities", "1.5"], "sparsities"),
    ("sweep sparsity nan", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--sparsities", "nan"], "sparsities"),
    ("sweep unknown strategy", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--strategies", "magic"], "magic"),
    ("sweep no strategies", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--strategies", ""], "strateg"),
    ("sweep unknown precision", ["sweep", TINY, "--profile", "host", "-o", "{dir}/sw", "--quantize", "int4"], "int4"),
    ("sweep precision the profile lacks", ["sweep", TINY, "--profile", "x86-amx", "-o", "{dir}/sw", "--quantize", "fp16"], "fp16"),
    ("sweep unknown profile", ["sweep", TINY, "--profile", "nope", "-o", "{dir}/sw"], "nope"),
    ("sweep output is a file", ["sweep", TINY, "--profile", "host", "-o", "{notes.txt}"], "notes.txt"),
    ("sweep output under a file", ["sweep", TINY, "--profile", "host", "-o", "{notes.txt}/sw"], "writable"),
    # check
    ("check missing report", ["check", "{dir}/missing.json"], "not found"),
    ("check not JSON", ["check", "{not_json.json}"], "not valid JSON"),
    ("check a JSON array", ["check", "{array.json}"], "not an edgeprune report"),
    ("check a folder without a report", ["check", "{empty_dir}"], "not found"),
    ("check passed as text", ["check", "{report:passed_text}"], "passed"),
    ("check schema 3", ["check", "{report:schema_3}"], "schema"),
    ("check latency a number", ["check", "{report:latency_number}"], "latency"),
    ("check budgets text", ["check", "{report:budgets_text}"], "budgets"),
    ("check negative MACs", ["check", "{report:macs_negative}"], "macs_after"),
    ("check no latency", ["check", "{report:no_latency}"], "latency"),
    ("check budget nan", ["check", "{report:passed_text}", "--latency-budget-ms", "nan"], "report"),
    # bench
    ("bench missing file", ["bench", "{dir}/missing.onnx"], "not found"),
    ("bench truncated ONNX", ["bench", "{truncated.onnx}"], "ONNX"),
    ("bench not a model", ["bench", "{notes.txt}"], "notes.txt"),
    ("bench a folder that is no build", ["bench", "{empty_dir}"], "build folder"),
    ("bench shape not a shape", ["bench", "{tiny_onnx}", "--input-shape", "1xAx3"], "input-shape"),
    ("bench shape of the wrong rank", ["bench", "{tiny_onnx}", "--input-shape", "1x3"], "shape"),
    ("bench baseline not ONNX", ["bench", "{tiny_onnx}", "--baseline", "{notes.txt}"], "baseline"),
    ("bench unknown profile", ["bench", "{tiny_onnx}", "--profile", "nope"], "nope"),
    ("bench a build with a malformed report", ["bench", "{broken_build}"], "report"),
    # profiles
    ("show unknown profile", ["profiles", "show", "nope"], "nope"),
    ("show a folder", ["profiles", "show", "{empty_dir}"], "empty_dir"),
    ("show a malformed profile", ["profiles", "show", "{bad_profile.toml}"], "bad_profile"),
    ("probe name with a slash", ["profiles", "probe", "-o", "{dir}/p.toml", "--name", "a/b", "--seconds", "0.1"], "name"),
    ("probe output is a folder", ["profiles", "probe", "-o", "{empty_dir}", "--seconds", "0.1"], "empty_dir"),
    ("probe seconds zero", ["profiles", "probe", "-o", "{dir}/p.toml", "--seconds", "0"], "seconds"),
    ("probe output under a file", ["profiles", "probe", "-o", "{notes.txt}/p.toml", "--seconds", "0.1"], "writable"),
    ("probe name not the file's", ["profiles", "probe", "-o", "{dir}/p.toml", "--name", "q", "--seconds", "0.1"], "match"),
    # trt-build
    ("trt-build missing folder", ["trt-build", "{dir}/nothing"], "nothing"),
    ("trt-build a folder that is no bundle", ["trt-build", "{bundle}"], "bundle"),
]


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(args, says, files, digits_build, tiny_onnx, capsys):
    made = reports(digits_build, files)
    names = {**{k: str(v) for k, v in files.items()}, **{f"report:{k}": str(v) for k, v in made.items()},
             "tiny_onnx": str(tiny_onnx)}
    argv = []
    for arg in args:
        for key, value in names.items():
            arg = arg.replace("{" + key + "}", value)
        argv.append(arg)
    before = sorted(p.name for p in files["dir"].iterdir())
    code, _, err = run_main(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("✓")]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert says.lower() in lines[0].lower(), lines[0]
    after = sorted(p.name for p in files["dir"].iterdir() if not p.name.endswith(".json"))
    assert [n for n in after if n not in before] == [], "a refused command wrote something"


def test_the_matrix_is_large():
    assert len(CASES) >= 80


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from edgeprune import load_workload
    from edgeprune.backends.onnx_tools.export import export_onnx

    w = load_workload(TINY)
    return export_onnx(w.model, w.example_inputs, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_a_workload_imports_helpers_from_its_own_folder(tmp_path, capsys):
    code, _, err = run_main(["plan", str(BAD / "helper_pkg" / "uses_helper.py"), "--profile", "host"], capsys)
    assert code == 0, err
