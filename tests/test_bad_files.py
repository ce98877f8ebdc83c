"""Damaged and hostile files from the ecosystem, handed in as a user would: ONNX, safetensors and
configs, ``.pt2`` programs, images, text, TOML, reports and URLs. Each is one line on stderr,
exit 2, no traceback, nothing written (test_bad_input.py holds the project's first matrix).

The damaged files are made from real ones (an exported ONNX model, the bundled tiny LM's
``hf:`` folder, a saved ``torch.export`` program, real PNGs) by cutting, overwriting or
editing them the way a broken download, a bad copy or a wrong hand-edit does.
"""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, run_main

TINY = str(ROOT / "tests" / "tiny_workload.py")
TINY_LM = ROOT / "examples" / "weights" / "tiny_lm"


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class ReturnsDict(Conv):
    def forward(self, x):
        return {"logits": super().forward(x)}


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


def _onnx_files(put, d: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgeprune.backends.onnx_tools.export import export_onnx

    x = torch.rand(1, 3, 16, 16)
    good = export_onnx(Conv().eval(), (x,), d / "good.onnx")
    raw = good.read_bytes()
    put("empty.onnx", b"")
    put("random.onnx", np.random.default_rng(0).bytes(4096))
    put("half.onnx", raw[: len(raw) // 2])
    put("tensor_proto.onnx", helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    put("no_graph.onnx", onnx.ModelProto(ir_version=9).SerializeToString())
    model = onnx.load(str(good))

    def variant(name, edit):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        edit(m)
        put(name, m.SerializeToString())

    variant("opset_99.onnx", lambda m: m.opset_import[0].__setattr__("version", 99))
    variant("ir_99.onnx", lambda m: m.__setattr__("ir_version", 99))
    variant("unknown_op.onnx", lambda m: m.graph.node[0].__setattr__("op_type", "NoSuchOp"))
    variant("dangling_input.onnx", lambda m: m.graph.node[0].input.__setitem__(0, "nowhere"))

    def external(location):
        def edit(m):
            tensor = m.graph.initializer[0]
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", "0"), ("length", "864")):
                tensor.external_data.add(key=key, value=value)
        return edit

    variant("external_missing.onnx", external("weights.bin"))
    variant("external_outside.onnx", external("../../../../etc/hostname"))
    (d / "short.bin").write_bytes(b"\0" * 8)
    variant("external_short.onnx", external("short.bin"))
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
        "c", TensorProto.FLOAT, [1], [1.0]))], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    put("no_inputs.onnx", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [1])])
    put("string_input.onnx", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    (d / "folder.onnx").mkdir()


def _hf_folders(d: Path) -> dict[str, Path]:
    """Copies of the tiny LM's hf: folder, each damaged one way."""
    made = {}
    weights = (TINY_LM / "model.safetensors").read_bytes()
    config = json.loads((TINY_LM / "config.json").read_text())

    def folder(name, *, config_text=None, weights_bytes=None, drop=(), tokenizer=None):
        path = d / name
        shutil.copytree(TINY_LM, path)
        if config_text is not None:
            (path / "config.json").write_text(config_text)
        if weights_bytes is not None:
            (path / "model.safetensors").write_bytes(weights_bytes)
        for file in drop:
            (path / file).unlink()
        if tokenizer is not None:
            (path / "tokenizer.json").write_text(tokenizer)
        made[name] = path

    header_len = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8:8 + header_len])
    first = next(k for k in header if k != "__metadata__")

    def with_header(edit):
        h = json.loads(json.dumps(header))
        edit(h)
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + weights[8 + header_len:]

    folder("st_truncated", weights_bytes=weights[: len(weights) // 2])
    folder("st_empty", weights_bytes=b"")
    folder("st_header_huge", weights_bytes=struct.pack("<Q", 10**15) + weights[8:])
    folder("st_header_not_json", weights_bytes=struct.pack("<Q", 16) + b"{not json at all" + weights[24:])
    folder("st_offsets_beyond", weights_bytes=with_header(
        lambda h: h[first].__setitem__("data_offsets", [0, 10**12])))
    folder("st_dtype_unknown", weights_bytes=with_header(lambda h: h[first].__setitem__("dtype", "F99")))
    folder("st_missing", drop=("model.safetensors",))
    folder("config_not_json", config_text="{ not json")
    folder("config_array", config_text="[1, 2]")
    folder("config_hidden_text", config_text=json.dumps({**config, "hidden_size": "big"}))
    folder("config_layers_negative", config_text=json.dumps({**config, "num_hidden_layers": -2}))
    folder("config_vocab_zero", config_text=json.dumps({**config, "vocab_size": 0}))
    folder("config_heads_inconsistent", config_text=json.dumps({**config, "num_key_value_heads": 3}))
    folder("config_shapes_mismatch", config_text=json.dumps({**config, "vocab_size": 2048}))
    folder("config_unknown_type", config_text=json.dumps({**config, "model_type": "no_such_arch",
                                                           "architectures": ["NoSuchArchForCausalLM"]}))
    folder("config_no_type", config_text=json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    folder("config_architectures_text", config_text=json.dumps({**config, "architectures": "LlamaForCausalLM"}))
    folder("tokenizer_not_json", tokenizer="{ broken")
    folder("tokenizer_missing", drop=("tokenizer.json", "tokenizer_config.json"))
    (d / "st_is_folder").mkdir()
    shutil.copy(TINY_LM / "config.json", d / "st_is_folder" / "config.json")
    (d / "st_is_folder" / "model.safetensors").mkdir()
    made["st_is_folder"] = d / "st_is_folder"
    return made


def _programs(put, d: Path) -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.export.save(torch.export.export(Conv().eval(), (x,)), str(d / "good.pt2"))
    raw = (d / "good.pt2").read_bytes()
    put("empty.pt2", b"")
    put("random.pt2", np.random.default_rng(1).bytes(2048))
    put("half.pt2", raw[: len(raw) // 2])
    torch.save(Conv().state_dict(), str(d / "state_dict.pt2"))
    import zipfile

    with zipfile.ZipFile(d / "zip_of_text.pt2", "w") as z:
        z.writestr("notes.txt", "not a program")
    torch.export.save(torch.export.export(ReturnsDict().eval(), (x,)), str(d / "returns_dict.pt2"))
    torch.export.save(torch.export.export(TwoInputs(), (x, x)), str(d / "one_tensor_twice.pt2"))


def _image_folders(d: Path) -> dict[str, Path]:
    from PIL import Image

    made = {}
    rng = np.random.default_rng(2)

    def folder(name, extra: dict[str, bytes] | None = None, good=8, sub=""):
        path = d / name
        (path / sub).mkdir(parents=True, exist_ok=True)
        for i in range(good):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path / sub / f"{i}.png")
        for file, data in (extra or {}).items():
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_bytes(data)
        made[name] = path

    png = (d / "one.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(png)
    raw = png.read_bytes()
    # a PNG whose IHDR claims 40000 x 40000 pixels (the header's CRC recomputed, so it parses)
    import zlib

    ihdr = b"IHDR" + struct.pack(">II", 40000, 40000) + raw[24:29]
    bomb = raw[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:]
    folder("img_bomb", {"bomb.png": bomb})
    folder("img_truncated", {"cut.png": raw[: len(raw) // 2]})
    folder("img_text", {"notes.png": b"this is not an image"})
    folder("img_empty_file", {"empty.jpg": b""})
    folder("img_too_few", good=3)
    folder("img_none", {"readme.md": b"no images here"}, good=0)
    folder("img_bmp_huge", {"huge.bmp": b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)})
    folder("img_webp_damaged", {"bad.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 garbage"})
    return made


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("damaged")
    out: dict[str, Path] = {"dir": d}

    def put(name: str, data: str | bytes) -> None:
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        out[name] = d / name

    _onnx_files(put, d)
    _programs(put, d)
    out.update(_hf_folders(d))
    out.update(_image_folders(d))
    for name in ("good.onnx", "good.pt2", "folder.onnx", "state_dict.pt2", "zip_of_text.pt2",
                 "returns_dict.pt2", "one_tensor_twice.pt2"):
        out[name] = d / name
    # text for a causal LM's --data
    for name, texts in {"txt_latin1": {"a.txt": "caf\xe9".encode("latin-1")},
                        "txt_all_empty": {"a.txt": b"", "b.txt": b"  \n"},
                        "txt_none": {"a.md": b"# not text data"},
                        "txt_binary": {"a.txt": b"\xff\xfe\x00\x00" * 64}}.items():
        (d / name).mkdir()
        for file, data in texts.items():
            (d / name / file).write_bytes(data)
        out[name] = d / name
    # TOML targets and profiles
    base = f'model = "{TINY}"\nprofile = "host"\n'
    for name, text in {
        "output_number.toml": base + "output = 5\n", "model_number.toml": 'model = 5\nprofile = "host"\n',
        "data_list.toml": base + 'data = ["a"]\n', "profile_table.toml": f'model = "{TINY}"\nprofile = {{x = 1}}\n',
        "target_empty.toml": "", "duplicate_key.toml": base + 'profile = "x86-avx2"\n',
        "nested_model.toml": "[model]\npath = 1\n", "quantize_list.toml": base + 'quantize = ["int8"]\n',
        "format_number.toml": base + "format = 3\n", "strategy_bool.toml": base + "strategy = true\n",
        "profile_cores_text.toml": 'name = "profile_cores_text"\nfamily = "x86"\ncores = "many"\n',
        "profile_empty.toml": "",
    }.items():
        put(name, text)
    put("target_latin1.toml", base.encode() + b'name = "caf\xe9"\n')
    put("target_binary.toml", b"\x00\x01\x02model = 3")
    put("profile_binary.toml", b"\xff\xfe\x00garbage")
    return out


@pytest.fixture(scope="module")
def reports(digits_build, files) -> dict[str, Path]:
    report = digits_build[2]
    d = files["dir"]
    text = json.dumps(report)
    made = {}

    def put(name: str, data: str | bytes) -> None:
        (d / f"{name}.json").write_bytes(data if isinstance(data, bytes) else data.encode())
        made[name] = d / f"{name}.json"

    put("huge", text[:-1] + ', "padding": "' + "x" * 9_000_000 + '"}')
    put("deep", "[" * 100_000 + "]" * 100_000)
    put("deep_object", '{"a":' * 50_000 + "1" + "}" * 50_000)
    put("latency_1e400", text.replace('"median_ms": ', '"median_ms": 1e400, "x": ', 1))
    put("latency_minus_1e400", text.replace('"median_ms": ', '"median_ms": -1e400, "x": ', 1))
    put("nan_literal", text.replace('"median_ms": ', '"median_ms": NaN, "x": ', 1))
    put("empty", b"")
    put("binary", b"\x00\xff\x10" * 100)
    put("utf16", text.encode("utf-16"))
    put("schema_text", json.dumps({**report, "schema": "1"}))
    put("latency_negative", json.dumps({**report, "latency": {**report["latency"], "median_ms": -3.0}}))
    (d / "report_is_folder").mkdir()
    (d / "report_is_folder" / "report.json").mkdir()
    made["report_is_folder"] = d / "report_is_folder"
    return made


OUT = ["-o", "{dir}/never"]
P = ["--profile", "host"]
CASES = [
    # ONNX handed to bench, and as its baseline
    *[(f"bench {n}", ["bench", "{" + n + "}"], n) for n in (
        "empty.onnx", "random.onnx", "half.onnx", "tensor_proto.onnx", "no_graph.onnx", "opset_99.onnx",
        "ir_99.onnx", "unknown_op.onnx", "dangling_input.onnx", "external_missing.onnx", "external_outside.onnx",
        "external_short.onnx", "no_inputs.onnx", "string_input.onnx", "folder.onnx")],
    *[(f"bench baseline {n}", ["bench", "{good.onnx}", "--baseline", "{" + n + "}"], n) for n in (
        "empty.onnx", "random.onnx", "half.onnx", "opset_99.onnx", "unknown_op.onnx", "external_missing.onnx",
        "external_outside.onnx", "string_input.onnx")],
    # hf: folders with damaged weights, configs and tokenizers
    *[(f"hf {n}", ["plan", "hf:{" + n + "}"] + P, n) for n in (
        "st_truncated", "st_empty", "st_header_huge", "st_header_not_json", "st_offsets_beyond", "st_dtype_unknown",
        "st_missing", "st_is_folder", "config_not_json", "config_array", "config_hidden_text",
        "config_layers_negative", "config_vocab_zero", "config_heads_inconsistent", "config_shapes_mismatch",
        "config_unknown_type", "config_no_type", "config_architectures_text", "tokenizer_not_json",
        "tokenizer_missing")],
    # .pt2 programs
    *[(f"pt2 {n}", ["plan", "{" + n + "}"] + P, n) for n in (
        "empty.pt2", "random.pt2", "half.pt2", "state_dict.pt2", "zip_of_text.pt2", "returns_dict.pt2",
        "one_tensor_twice.pt2")],
    # images as --data for a program that takes an image batch
    *[(f"images {n}", ["plan", "{good.pt2}", "--data", "{" + n + "}"] + P, n) for n in (
        "img_bomb", "img_truncated", "img_text", "img_empty_file", "img_too_few", "img_none", "img_bmp_huge",
        "img_webp_damaged")],
    # text as --data for a causal LM
    *[(f"text {n}", ["plan", f"hf:{TINY_LM}", "--data", "{" + n + "}"] + P, n) for n in (
        "txt_latin1", "txt_all_empty", "txt_none", "txt_binary")],
    ("text folder missing", ["plan", f"hf:{TINY_LM}", "--data", "{dir}/no_such_folder"] + P, "no_such_folder"),
    # TOML targets and profiles
    *[(f"target {n}", ["build", "{" + n + "}"] + OUT, says) for n, says in (
        ("output_number.toml", "output"), ("model_number.toml", "model"), ("data_list.toml", "data"),
        ("profile_table.toml", "profile"), ("target_empty.toml", "model"), ("duplicate_key.toml", "TOML"),
        ("nested_model.toml", "model"), ("quantize_list.toml", "quantize"), ("format_number.toml", "format"),
        ("strategy_bool.toml", "strategy"), ("target_latin1.toml", "target_latin1"),
        ("target_binary.toml", "target_binary"))],
    *[(f"profile {n}", ["plan", TINY, "--profile", "{" + n + "}"], n.removesuffix(".toml")) for n in (
        "profile_cores_text.toml", "profile_empty.toml", "profile_binary.toml")],
    # reports handed to check
    *[(f"check {n}", ["check", "{report:" + n + "}"], says) for n, says in (
        ("huge", "MB"), ("deep", "nest"), ("deep_object", "nest"), ("latency_1e400", "number"),
        ("latency_minus_1e400", "number"), ("nan_literal", "number"), ("empty", "JSON"), ("binary", "JSON"),
        ("utf16", "JSON"), ("schema_text", "schema"), ("latency_negative", "median_ms"),
        ("report_is_folder", "report"))],
    # URLs and where things go
    *[(f"device {u}", ["build", TINY, "--device", u] + P + OUT, "device") for u in (
        "http://", "http://127.0.0.1:99999", "http://[::1", "http://exa mple.org", "127.0.0.1:9", "http://:80")],
    ("bench device without host", ["bench", "{good.onnx}", "--device", "http://"], "device"),
    *[(f"mlflow {n}", ["build", TINY, f"--mlflow={u}"] + P + OUT, "mlflow") for n, u in (
        ("a file", "{good.onnx}"), ("/dev/null", "/dev/null"), ("unknown scheme", "nosuch://x"),
        ("sqlite under a file", "sqlite:///{good.onnx}/mlflow.db"), ("sqlite a folder", "sqlite:///{img_none}"),
        ("sqlite in memory", "sqlite://"), ("file URI to a file", "file:{good.onnx}"),
        ("server URL without host", "http://"), ("nothing listens", "http://127.0.0.1:9"))],
    ("output name too long", ["build", TINY, "-o", "{dir}/" + "x" * 300] + P, "long"),
    ("sweep output name too long", ["sweep", TINY, "-o", "{dir}/" + "x" * 300] + P, "long"),
    ("sweep measure-here on a GPU profile", ["sweep", TINY, "--profile", "jetson-orin-nano", "--measure-here",
                                             "-o", "{dir}/sw"], "measure-here"),
]


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_file_is_one_line_and_exit_2(args, says, files, reports, capsys):
    names = {**{k: str(v) for k, v in files.items()}, **{f"report:{k}": str(v) for k, v in reports.items()}}
    argv = []
    for arg in args:
        for key, value in names.items():
            arg = arg.replace("{" + key + "}", value)
        argv.append(arg)
    says = names.get(says, says)
    before = sorted(p.name for p in files["dir"].iterdir())
    code, _, err = run_main(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("✓")]
    assert code == 2, (argv, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert Path(says).name.lower() in lines[0].lower(), lines[0]
    after = sorted(p.name for p in files["dir"].iterdir())
    assert [n for n in after if n not in before] == [], "a refused command wrote something"


def test_the_matrix_grew_by_more_than_80_cases():
    assert len(CASES) >= 80


def test_the_good_files_the_damaged_ones_come_from_are_accepted(files, capsys):
    """The matrix refuses damage, not the kind of file: the originals plan and bench."""
    for argv in (["plan", str(files["good.pt2"])] + P, ["plan", f"hf:{TINY_LM}"] + P,
                 ["bench", str(files["good.onnx"]), "--quick"]):
        code, _, err = run_main(argv, capsys)
        assert code == 0, (argv, err)


def test_a_refusal_answers_before_the_heavy_libraries_are_imported(tmp_path):
    """edgeprune's own checks come before torch, ONNX and transformers are imported (seconds of
    a machine's time): a refused command answers at once. Checked by what was imported, not timed."""
    import subprocess
    import sys

    (tmp_path / "empty.json").write_text("")
    commands = [["check", str(tmp_path / "empty.json")],
                ["build", TINY, "--profile", "host", "--latency-budget-ms", "nan", "-o", str(tmp_path / "o")],
                ["build", TINY, "--profile", "nope", "-o", str(tmp_path / "o")],
                ["build", TINY, "--profile", "jetson-orin-nano", "--measure-here", "-o", str(tmp_path / "o")],
                ["build", TINY, "--profile", "host", "--device", "http://[::1", "-o", str(tmp_path / "o")],
                ["build", TINY, "--profile", "host", "--mlflow=nosuch://x", "-o", str(tmp_path / "o")],
                ["plan", TINY, "--profile", "nope"],
                ["sweep", TINY, "--profile", "host", "-o", str(tmp_path / "s"), "--sparsities", "1.5"],
                ["sweep", TINY, "--profile", "jetson-orin-nano", "--measure-here", "-o", str(tmp_path / "s")]]
    probe = ("import sys\nfrom edgeprune.cli import main\nsys.argv = ['edgeprune', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'transformers') if m in sys.modules)\n"
             "print(code, ','.join(heavy) or '-', file=sys.__stdout__)\n")
    for argv in commands:
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert proc.stdout.split() == ["2", "-"], (argv, proc.stdout, proc.stderr)
    assert not any(tmp_path.glob("o*")) and not any(tmp_path.glob("s*"))
