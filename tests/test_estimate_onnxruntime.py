"""The estimate of an ONNX file ONNX Runtime runs: its kernels grouped as ONNX Runtime fuses them, and the
per-element cost of the operators between a transformer's products, fitted by the probe on graphs of its own."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from edgeprune.backends.onnx_tools.fusion import optimized_graph
from edgeprune.measure.estimate import estimate_graph, kernel_time
from edgeprune.measure.graph import ONNXRUNTIME, lowered_graph
from edgeprune.probe.calibrate import BETWEEN_INPUTS, _fit_per_element, between_model
from edgeprune.profile import load_profile

GELU = ("Div", "Erf", "Add", "Mul", "Mul")


def _with_elementwise_cost(profile, ns: float):
    eff = profile.efficiency.model_copy(update={"elementwise_ns_by_precision": {"fp32": ns}})
    return profile.model_copy(update={"efficiency": eff})


def test_an_encoder_is_grouped_into_the_kernels_onnx_runtime_runs(tmp_path):
    shape = BETWEEN_INPUTS[0]
    path = tmp_path / "encoder.onnx"
    onnx.save(between_model(shape), path)
    ort = Counter(n.op_type for n in optimized_graph(path).node)
    ours = Counter(tuple(k.ops) for k in lowered_graph(path, [shape], runtime=ONNXRUNTIME).launched)
    # a free batch axis: every product runs alone (ONNX Runtime makes no Gemm of a 3-D MatMul and its bias),
    # and GELU's five operators are one kernel, as ONNX Runtime's (Bias)Gelu is
    products = ort["MatMul"] + ort["FusedMatMul"] + ort["Gemm"]
    assert products == 16 and ours[("MatMul",)] == products and ort["Gemm"] == 0
    assert ours[GELU] == ort["Gelu"] + ort["BiasGelu"] == 2
    # a compiler that fuses every epilogue (TensorRT) takes the bias into the product, and GELU apart
    compiled = Counter(tuple(k.ops) for k in lowered_graph(path, [shape]).launched)
    assert compiled[("MatMul", "Add")] == 12 and compiled[GELU] == 0


def test_a_product_whose_sizes_are_all_known_keeps_its_bias(tmp_path):
    # with every axis fixed, ONNX Runtime fuses a 3-D MatMul and its bias into a Gemm
    model = between_model(BETWEEN_INPUTS[0])
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    assert Counter(n.op_type for n in optimized_graph(path).node)["Gemm"] == 12
    ours = Counter(tuple(k.ops) for k in lowered_graph(path, [BETWEEN_INPUTS[0]], runtime=ONNXRUNTIME).launched)
    assert ours[("MatMul", "Add")] == 12


def test_operators_between_products_pay_their_per_element_cost_and_the_products_do_not(tmp_path):
    base = load_profile("x86-avx2")
    costly = _with_elementwise_cost(base, 0.5)
    graph = lowered_graph(between_model(BETWEEN_INPUTS[0]), [BETWEEN_INPUTS[0]], runtime=ONNXRUNTIME)
    tokens, width = BETWEEN_INPUTS[0][1:]
    for kernel in graph.launched:
        extra = kernel_time(kernel, costly).ms - kernel_time(kernel, base).ms
        if kernel.op == "MatMul":
            assert kernel.elements == 0 and extra == 0
        elif kernel.ops == ["LayerNormalization"]:  # reads and writes tokens x width
            assert kernel.elements == tokens * width and extra == pytest.approx(tokens * width * 0.5e-6)


def test_the_probe_recovers_the_per_element_cost_of_encoders_timed_on_a_known_device():
    base = load_profile("x86-avx2")
    truth = _with_elementwise_cost(base, 0.7)
    data = base.model_dump(mode="json", exclude_none=True)
    timed = []
    for shape in BETWEEN_INPUTS:
        graph = lowered_graph(between_model(shape), [shape], runtime=ONNXRUNTIME)
        timed.append((graph, estimate_graph(graph, truth).ms))
    assert _fit_per_element(timed, data, lambda g: sum(k.elements for k in g.kernels)) == pytest.approx(0.7, rel=1e-3)
    # encoders no slower than their products and memory traffic say: no such cost
    plain = [(graph, estimate_graph(graph, base).ms) for graph, _ in timed]
    assert _fit_per_element(plain, data, lambda g: sum(k.elements for k in g.kernels)) == 0.0


def test_an_integer_product_takes_its_rescaling_back_to_float_as_onnx_runtime_does(tmp_path):
    # dynamic int8 (what a build makes of a transformer's MatMuls): MatMulInteger, then Cast, Mul by the
    # scales and the bias Add, which ONNX Runtime runs as one MatMulIntegerToFloat (or DynamicQuantizeMatMul)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shape = BETWEEN_INPUTS[0]
    fp32, int8 = tmp_path / "encoder.onnx", tmp_path / "encoder-int8.onnx"
    onnx.save(between_model(shape), fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    ort = Counter(n.op_type for n in optimized_graph(int8).node)
    kernels = lowered_graph(int8, [shape], runtime=ONNXRUNTIME).launched
    products = [k for k in kernels if k.op == "MatMulInteger"]
    assert len(products) == ort["MatMulIntegerToFloat"] + ort["DynamicQuantizeMatMul"] == 12
    assert all(k.ops == ["MatMulInteger", "Cast", "Mul", "Add"] and k.elements == 0 for k in products)
