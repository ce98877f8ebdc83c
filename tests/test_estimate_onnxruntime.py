"""The estimate of an ONNX file ONNX Runtime runs: its kernels grouped as ONNX Runtime fuses them, and the
per-element cost of the operators between a transformer's products, fitted by the probe on graphs of its own."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from edgeprune.backends.onnx_tools.fusion import optimized_graph
from edgeprune.measure.estimate import estimate_graph, kernel_time
from edgeprune.measure.graph import ANCHORS, ONNXRUNTIME, lowered_graph
from edgeprune.probe.chains import BETWEEN_INPUTS, between_model
from edgeprune.probe.fit import fit_per_element
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
    # a free batch axis: every product runs without its bias (ONNX Runtime makes no Gemm of a 3-D MatMul and
    # its bias) but with the scaling of attention's scores (its FusedMatMul), and GELU's five operators and the
    # bias Add before them are one kernel, as ONNX Runtime's BiasGelu is
    assert ort["Gemm"] == 0 and ort["MatMul"] == ours[("MatMul",)] == 14
    assert ort["FusedMatMul"] == ours[("MatMul", "Mul")] == 2
    assert ours[("Add", *GELU)] == ort["BiasGelu"] == 2
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
    ort = Counter(n.op_type for n in optimized_graph(path).node)
    ours = Counter(tuple(k.ops) for k in lowered_graph(path, [BETWEEN_INPUTS[0]], runtime=ONNXRUNTIME).launched)
    assert ort["Gemm"] == ours[("MatMul", "Add")] == 12
    assert ort["Gelu"] == ours[GELU] == 2 and ort["FusedMatMul"] == ours[("MatMul", "Mul")] == 2


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
    def between(kernel) -> bool:
        return kernel.op not in ANCHORS

    def between_ms(graph, profile) -> float:  # what the runtime's profiler gives the operators between products
        return sum(t.ms for k, t in zip(graph.kernels, estimate_graph(graph, profile).kernels, strict=True)
                   if between(k))

    base = load_profile("x86-avx2")
    truth = _with_elementwise_cost(base, 0.7)
    data = base.model_dump(mode="json", exclude_none=True)
    timed = []
    for shape in BETWEEN_INPUTS:
        graph = lowered_graph(between_model(shape), [shape], runtime=ONNXRUNTIME)
        timed.append((graph, between_ms(graph, truth)))
    assert fit_per_element(timed, data, lambda k: k.elements, between) == pytest.approx(0.7, rel=1e-3)
    # encoders no slower than their products and memory traffic say: no such cost
    plain = [(graph, between_ms(graph, base)) for graph, _ in timed]
    assert fit_per_element(plain, data, lambda k: k.elements, between) == 0.0


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


def test_the_probe_recovers_the_per_output_cost_of_pointwise_convolutions_timed_on_a_known_device():
    from edgeprune.probe.chains import POINTWISE_INPUTS, pointwise_model

    base = load_profile("x86-avx2")
    eff = base.efficiency.model_copy(update={"conv_output_ns_by_precision": {"fp32": 0.2}})
    truth = base.model_copy(update={"efficiency": eff})
    graphs = [lowered_graph(pointwise_model(shape), [shape], runtime=ONNXRUNTIME) for shape in POINTWISE_INPUTS]
    for graph in graphs:  # every 1x1 convolution pays 0.2 ns for each element it writes
        for kernel in graph.launched:
            extra = kernel_time(kernel, truth).ms - kernel_time(kernel, base).ms
            assert kernel.output_elements > 0 and extra == pytest.approx(kernel.output_elements * 0.2e-6)
    data = base.model_dump(mode="json", exclude_none=True)

    def products_ms(graph, profile) -> float:
        return sum(t.ms for t in estimate_graph(graph, profile).kernels)

    timed = [(graph, products_ms(graph, truth)) for graph in graphs]
    assert fit_per_element(timed, data, lambda k: k.output_elements) == pytest.approx(0.2, rel=1e-3)
    assert fit_per_element([(g, products_ms(g, base)) for g in graphs], data, lambda k: k.output_elements) == 0.0


def test_onnx_runtimes_profiler_gives_the_time_of_each_kind_of_operator_it_runs(tmp_path):
    import numpy as np

    from edgeprune.backends.onnx_tools.runtime import op_times_ms

    shape = BETWEEN_INPUTS[0]
    path = tmp_path / "encoder.onnx"
    onnx.save(between_model(shape), path)
    times = op_times_ms(path, {"x": np.zeros(shape, np.float32)}, 1, 3)
    ran = {n.op_type for n in optimized_graph(path).node}
    # every kind of operator of its optimized graph, by the name it runs under (a view may report no event)
    assert ran - {"Reshape"} <= set(times) <= ran and all(v >= 0 for v in times.values()) and times["MatMul"] > 0
