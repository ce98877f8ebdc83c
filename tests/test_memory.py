"""Peak memory of one inference: weights plus the activations alive together, counted by hand."""

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeprune.gate import Budgets, check_budgets
from edgeprune.measure.memory import peak_memory
from edgeprune.measurements import Measurements

from conftest import run_cli, stored_report

OPSET = [helper.make_opsetid("", 17)]


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def test_chain_peak_is_the_largest_input_plus_output_pair():
    # x (8x16x16) -> conv 8->32 + relu (32x16x16) -> conv 32->4 (4x16x16) -> flatten -> gemm (10)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["b"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    inits = [_w("w1", (32, 8, 3, 3)), _w("w2", (4, 32, 1, 1)), _w("w3", (10, 1024))]
    m = helper.make_model(helper.make_graph(nodes, "g", [_f32("x", ["n", 8, 16, 16])], [_f32("y", None)], inits),
                          opset_imports=OPSET)
    est = peak_memory(m, [(1, 8, 16, 16)])
    x, r, b = 8 * 256 * 4, 32 * 256 * 4, 4 * 256 * 4
    # while the first conv runs, x and its fused conv+relu output are alive; x is then freed
    assert est.activations_peak_bytes == max(x + r, r + b, b + 40)
    assert est.weights_bytes == (32 * 8 * 9 + 4 * 32 + 10 * 1024) * 4
    assert est.peak_bytes == est.weights_bytes + est.activations_peak_bytes
    # batch 4 scales activations, not weights
    four = peak_memory(m, [(4, 8, 16, 16)])
    assert four.activations_peak_bytes == 4 * est.activations_peak_bytes and four.weights_bytes == est.weights_bytes


def test_a_residual_keeps_its_input_alive_across_the_branch():
    # x -> a = relu(conv(x)); b = conv(a); c = conv(b); y = c + a: a stays alive until the Add
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a0"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["a", "w1"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["b", "w2"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c", "a"], ["y"])]
    inits = [_w("w0", (16, 4, 1, 1)), _w("w1", (64, 16, 1, 1)), _w("w2", (16, 64, 1, 1))]
    m = helper.make_model(helper.make_graph(nodes, "g", [_f32("x", [1, 4, 8, 8])], [_f32("y", None)], inits),
                          opset_imports=OPSET)
    est = peak_memory(m, [(1, 4, 8, 8)])
    a, b = 16 * 64 * 4, 64 * 64 * 4
    # the second conv's Add fuses into the third conv's kernel; peak: a and b alive, c being written
    c = 16 * 64 * 4
    assert est.activations_peak_bytes == max(4 * 64 * 4 + a, a + b, a + b + c)
    assert est.activations_peak_bytes == a + b + c


def test_fp16_artifact_from_fp32_graph_halves_and_report_budget_reads_peak(tmp_path, digits_build):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    m = helper.make_model(helper.make_graph(nodes, "g", [_f32("x", [1, 256])], [_f32("y", None)],
                                            [_w("w", (512, 256))]), opset_imports=OPSET)
    fp32, fp16 = peak_memory(m, [(1, 256)]), peak_memory(m, [(1, 256)], precision="fp16")
    assert fp16.peak_bytes == fp32.peak_bytes / 2
    measured = Measurements(memory=fp32.memory())
    assert measured.memory.peak_mb == round((512 * 256 + 256 + 512) * 4 / 1e6, 4)
    assert check_budgets(measured, Budgets(max_memory_mb=1.0))[0].met is True
    assert check_budgets(measured, Budgets(max_memory_mb=0.5))[0].met is False
    report = {**digits_build[2], "memory": fp32.memory().to_dict()}
    path = stored_report(tmp_path, report)
    proc = run_cli("check", str(path), "--max-memory-mb", "0.5", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["budgets"][0]["value"] == report["memory"]["peak_mb"]


def test_a_residual_branch_computed_later_in_graph_order_is_alive_at_the_add():
    # ResNet's projection shortcut is exported after the main branch: the Add fused into the
    # second conv must wait for it, with a, d and the output alive together.
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["a", "wb"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["x", "wd"], ["d"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["b", "d"], ["y"])]
    inits = [_w("wa", (32, 4, 1, 1)), _w("wb", (16, 32, 1, 1)), _w("wd", (16, 4, 1, 1))]
    m = helper.make_model(helper.make_graph(nodes, "g", [_f32("x", [1, 4, 8, 8])], [_f32("y", None)], inits),
                          opset_imports=OPSET)
    x, a, d, y = 4 * 64 * 4, 32 * 64 * 4, 16 * 64 * 4, 16 * 64 * 4
    assert peak_memory(m, [(1, 4, 8, 8)]).activations_peak_bytes == max(x + a, x + a + d, a + d + y) == a + d + y
