"""The roofline estimator on hand-built graphs: FLOPs, bytes, fusion and the sparsity rules."""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.measure.estimate import estimate_graph, estimate_onnx, kernel_time
from edgeprune.measure.graph import ANCHORS, lowered_graph
from edgeprune.profile import load_profile

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, inits):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=OPSET)


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _conv_bn_relu(batch_dim="batch"):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w"),
             *[numpy_helper.from_array(rng.random(32).astype(np.float32) + 0.5, n) for n in ("s", "b", "m", "v")]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    return _model(nodes, [_f32("x", [batch_dim, 16, 8, 8])], [_f32("y", None)], inits)


def test_conv_bn_relu_is_one_kernel_with_exact_flops_and_bytes():
    g = lowered_graph(_conv_bn_relu(), [(1, 16, 8, 8)])
    assert len(g.kernels) == 1
    k = g.kernels[0]
    assert k.ops == ["Conv", "BatchNormalization", "Relu"] and k.precision == "fp32"
    conv_flops = 2 * 32 * 8 * 8 * 16 * 9
    assert conv_flops <= k.flops <= conv_flops * 1.01  # the epilogue adds one op per element
    assert k.weight_bytes == (32 * 16 * 9 + 4 * 32) * 4
    assert k.activation_bytes == (16 * 8 * 8 + 32 * 8 * 8) * 4  # the Conv->BN->Relu tensors stay inside


def test_a_dynamic_batch_takes_the_given_size():
    one = lowered_graph(_conv_bn_relu(), [(1, 16, 8, 8)]).flops
    four = lowered_graph(_conv_bn_relu(), {"x": (4, 16, 8, 8)}).flops
    assert four == pytest.approx(4 * one)


def test_gemm_and_batched_matmul_flops():
    rng = np.random.default_rng(0)
    gemm = _model([helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)], [_f32("a", [1, 64])], [_f32("y", None)],
                  [numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "w")])
    assert lowered_graph(gemm, [(1, 64)]).kernels[0].flops == 2 * 64 * 128
    mm = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_f32("a", [2, 3, 4, 5]), _f32("b", [5, 6])],
                [_f32("y", None)], [])
    k = lowered_graph(mm, [(2, 3, 4, 5), (5, 6)]).kernels[0]
    assert k.flops == 2 * (2 * 3 * 4 * 6) * 5 and k.weight_bytes == 0
    assert k.activation_bytes == (2 * 3 * 4 * 5 + 5 * 6 + 2 * 3 * 4 * 6) * 4


def test_fp16_weights_count_two_bytes_and_run_at_fp16():
    w = np.ones((64, 64), np.float16)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)], [numpy_helper.from_array(w, "w")]),
        opset_imports=OPSET)
    k = lowered_graph(m, [(1, 64)]).kernels[0]
    assert k.precision == "fp16" and k.weight_bytes == 64 * 64 * 2 and k.activation_bytes == (64 + 64) * 2


def _qdq_conv(weights: np.ndarray):
    """Q -> DQ -> Conv(DQ(int8 W)) -> Q -> DQ: what ONNX Runtime's static QDQ quantizer writes."""
    cout, cin = weights.shape[:2]
    inits = [
        numpy_helper.from_array(weights.astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"]),
    ]
    return _model(nodes, [_f32("x", [1, cin, 8, 8])], [_f32("y", None)], inits)


def test_qdq_int8_conv_is_one_int8_kernel_with_one_byte_weights_and_activations():
    w = np.random.default_rng(0).integers(-100, 100, (32, 16, 3, 3))
    g = lowered_graph(_qdq_conv(w), [(1, 16, 8, 8)])
    convs = [k for k in g.kernels if k.op == "Conv"]
    assert len(convs) == 1
    conv = convs[0]
    assert conv.precision == "int8" and conv.ops == ["Conv", "QuantizeLinear"]
    # int8 weights, their fp32 scales and int8 zero points, and the output quantizer's scale and zero point
    assert conv.weight_bytes == 32 * 16 * 9 * 1 + 32 * 4 + 32 * 1 + 4 + 1
    assert conv.activation_bytes == (16 * 8 * 8 + 32 * 8 * 8) * 1
    assert conv.flops == 2 * 32 * 8 * 8 * 16 * 9
    # the input Q and the output DQ are kernels of their own (float in, float out)
    assert [k.ops for k in g.kernels] == [["QuantizeLinear"], ["Conv", "QuantizeLinear"], ["DequantizeLinear"]]


def _gemm_with(weights: np.ndarray, precision=TensorProto.FLOAT16):
    n, k = weights.shape
    dtype = np.float16 if precision == TensorProto.FLOAT16 else np.float32
    return helper.make_model(helper.make_graph(
        [helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("a", precision, [64, k])],
        [helper.make_tensor_value_info("y", precision, None)],
        [numpy_helper.from_array(weights.astype(dtype), "w")]), opset_imports=OPSET)


def _two_four(n: int, k: int) -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((n, k)) + 3.0  # no accidental zeros
    w.reshape(n, k // 4, 4)[:, :, :2] = 0  # two zeros in every four inputs
    return w


def test_two_four_speed_only_on_wide_layers_of_profiles_with_sparse_tensor_cores():
    a100 = load_profile("a100")
    wide = lowered_graph(_gemm_with(_two_four(512, 512)), [(64, 512)]).kernels[0]
    assert wide.weights[0].nm == (2, 4) and wide.weights[0].zero_fraction == 0.5
    sparse = kernel_time(wide, a100)
    dense_wide = kernel_time(lowered_graph(_gemm_with(_two_four(512, 512) + 1.0), [(64, 512)]).kernels[0], a100)
    assert sparse.sparse == "2:4" and dense_wide.sparse is None
    # same arithmetic, twice the peak: the compute part halves (the layer is compute-bound on peaks)
    flops = wide.flops
    eff = a100.efficiency
    assert sparse.flops == flops
    compute_s = flops / (a100.compute["fp16"].sparse_tops * 1e12 * eff.compute)
    memory_s = sparse.bytes / (a100.memory_bandwidth_gbs.value * 1e9 * eff.bandwidth)
    assert sparse.ms == pytest.approx((max(compute_s, memory_s) + eff.layer_overhead_us * 1e-6) * 1e3)
    # compressed 2:4 storage: half the values plus 2 bits of index each
    assert sparse.bytes - dense_wide.bytes == pytest.approx(512 * 512 * 2 * (0.5 * (1 + 2 / 16) - 1))
    narrow = lowered_graph(_gemm_with(_two_four(128, 128)), [(64, 128)]).kernels[0]
    assert narrow.weights[0].nm == (2, 4) and kernel_time(narrow, a100).sparse is None  # under min_channels
    assert kernel_time(wide, load_profile("x86-avx2")).sparse is None  # no sparse kernels on the CPU


def test_unstructured_speed_only_above_the_profiles_threshold():
    iphone = load_profile("iphone-15-pro")
    rng = np.random.default_rng(0)

    def with_zeros(fraction):
        w = rng.standard_normal((256, 256)) + 3.0
        w[rng.random(w.shape) < fraction] = 0
        return lowered_graph(_gemm_with(w), [(64, 256)]).kernels[0]

    sparse, half = with_zeros(0.8), with_zeros(0.5)
    t_sparse, t_half = kernel_time(sparse, iphone), kernel_time(half, iphone)
    assert t_sparse.sparse == "unstructured" and t_half.sparse is None
    assert t_sparse.flops == pytest.approx(sparse.flops * (1 - sparse.weights[0].zero_fraction))
    assert t_half.flops == half.flops
    assert kernel_time(sparse, load_profile("jetson-orin-nano")).sparse is None  # TensorRT: dense math


def test_memory_bound_layer_is_timed_by_its_bytes_and_precision_retypes_fp32():
    # A batch-1 GEMV over a 16 MB fp32 weight: far below any compute roof.
    w = np.ones((2048, 2048), np.float32)
    k = lowered_graph(_gemm_with(w, TensorProto.FLOAT), [(1, 2048)]).kernels[0]
    nano = load_profile("jetson-orin-nano")
    t32 = kernel_time(k, nano)
    assert t32.bound == "memory"
    bw = nano.memory_bandwidth_gbs.value * 1e9 * nano.efficiency.bandwidth
    assert t32.ms == pytest.approx((k.weight_bytes + k.activation_bytes) / bw * 1e3 + nano.efficiency.layer_overhead_us * 1e-3)
    t16 = kernel_time(k, nano, precision="fp16")
    assert t16.precision == "fp16" and t16.bytes == pytest.approx(t32.bytes / 2)
    # the iPhone has no fp32 peak: an fp32 kernel runs at its fp16 rate
    big = lowered_graph(_gemm_with(w, TensorProto.FLOAT), [(2048, 2048)]).kernels[0]
    iphone = load_profile("iphone-15-pro")
    t = kernel_time(big, iphone)
    assert t.bound == "compute"
    expected = big.flops / (iphone.compute["fp16"].dense_tops * 1e12 * iphone.efficiency.compute)
    assert t.ms == pytest.approx((expected + iphone.efficiency.layer_overhead_us * 1e-6) * 1e3)


def test_estimate_sums_kernels_and_views_cost_nothing():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    m = _model(nodes, [_f32("x", [1, 8, 4, 4])], [_f32("y", None)],
               [numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w"),
                numpy_helper.from_array(rng.standard_normal((10, 128)).astype(np.float32), "g")])
    profile = load_profile("x86-avx2")
    est = estimate_onnx(m, [(1, 8, 4, 4)], profile)
    assert [k.ops for k in est.kernels] == [("Conv", "Relu"), ("Flatten",), ("Gemm",)]
    assert est.kernels[1].ms == 0 and est.kernels[1].bound == "view"
    assert est.ms == pytest.approx(sum(k.ms for k in est.kernels))
    assert est.ms >= 2 * profile.efficiency.layer_overhead_us * 1e-3
    assert est.flops == pytest.approx(2 * 8 * 16 * 8 + 16 * 8 + 2 * 128 * 10)


def test_exported_torch_model_matches_torch_mac_count(tmp_path):
    import torch

    from edgeprune.backends.onnx_tools.export import export_onnx
    from edgeprune.stats import count_macs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    x = torch.rand(1, 3, 32, 32)
    path = export_onnx(model, (x,), tmp_path / "m.onnx")
    g = lowered_graph(path, [(1, 3, 32, 32)])
    matmul_flops = sum(k.flops for k in g.kernels if k.op in ("Conv", "Gemm", "MatMul"))
    # the epilogues add one op per output element on top of 2 x MACs
    assert 2 * count_macs(model, (x,)) <= matmul_flops <= 2 * count_macs(model, (x,)) * 1.02
    assert len(g.launched) == 4  # conv+relu, conv+relu, pooling, linear
    assert math.isclose(g.weight_bytes, sum(p.numel() for p in model.parameters() if p.dim() > 0) * 4
                        - 2 * 16 * 4, rel_tol=0.01)  # BatchNorm folds into the first conv


def _conv(cin, cout, k, stride, hw, group=1):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
                            strides=[stride, stride], group=group)
    return _model([node], [_f32("x", [1, cin, hw, hw])], [_f32("y", None)], [numpy_helper.from_array(w, "w")])


def _with_shallow_cost(profile, per_output_ns, per_row_ns):
    eff = profile.efficiency.model_copy(update={"shallow_conv_ns_by_precision": {"fp32": (per_output_ns, per_row_ns)}})
    return profile.model_copy(update={"efficiency": eff})


def test_a_shallow_convolution_pays_per_output_and_per_window_row_what_its_flops_do_not_show():
    base = load_profile("x86-avx2")
    costly = _with_shallow_cost(base, 0.5, 4.0)
    stem = lowered_graph(_conv(3, 32, 7, 2, 224), [(1, 3, 224, 224)]).kernels[0]
    assert (stem.tap_channels, stem.window_rows, stem.output_elements) == (3, 7, 32 * 112 * 112)
    extra_ms = kernel_time(stem, costly).ms - kernel_time(stem, base).ms
    pixels = 112 * 112
    assert extra_ms == pytest.approx((32 * pixels * 0.5 + pixels * 7 * 4.0) * 1e-6)
    # a deep convolution and a depthwise one are the kernels their FLOPs describe
    for model, shape in ((_conv(16, 32, 3, 1, 56), (1, 16, 56, 56)), (_conv(32, 32, 3, 1, 56, group=32), (1, 32, 56, 56))):
        k = lowered_graph(model, [shape]).kernels[0]
        assert kernel_time(k, costly).ms == kernel_time(k, base).ms
    # a profile that states no such cost (every built-in one) estimates the stem as before
    assert base.efficiency.shallow_conv_ns_by_precision == {}


def test_the_probe_recovers_the_shallow_costs_of_stems_timed_on_a_known_device():
    from edgeprune.probe.chains import STEM_INPUT, STEMS, stem_model
    from edgeprune.probe.fit import fit_shallow

    base = load_profile("x86-avx2")
    truth = _with_shallow_cost(base, 0.3, 3.5)
    data = base.model_dump(mode="json", exclude_none=True)
    def convolutions_ms(graph, profile) -> float:  # what the runtime's profiler gives the stem's convolution
        return sum(t.ms for k, t in zip(graph.kernels, estimate_graph(graph, profile).kernels, strict=True)
                   if k.op in ANCHORS)

    graphs = [lowered_graph(stem_model(stem), [STEM_INPUT]) for stem in STEMS]
    stems = [(graph, convolutions_ms(graph, truth)) for graph in graphs]
    assert fit_shallow(stems, data) == pytest.approx([0.3, 3.5], rel=1e-3)
    # stems no slower than their FLOPs say: no shallow cost
    assert fit_shallow([(graph, convolutions_ms(graph, base)) for graph in graphs], data) == [0.0, 0.0]


def test_a_depthwise_convolution_pays_per_channel_plane_so_a_small_map_costs_more_per_output():
    """Depthwise layers on small maps (a mobile network's last stages) run slower per output than on large
    ones: each plane pays a cost of its own. The probe fits it beside the per-output cost."""
    from edgeprune.probe.chains import DEPTHWISE_INPUTS, depthwise_model
    from edgeprune.probe.fit import fit_depthwise

    base = load_profile("x86-avx2")
    eff = base.efficiency.model_copy(update={"depthwise_ns_by_precision": {"fp32": 1.0},
                                             "depthwise_channel_ns_by_precision": {"fp32": 50.0}})
    truth = base.model_copy(update={"efficiency": eff})
    # two layers writing the same 40,000 outputs with the same FLOPs: 16 planes of 50x50 and 1,600 of 5x5
    large, small = (lowered_graph(_conv(c, c, 3, 1, hw, group=c), [(1, c, hw, hw)]).kernels[0]
                    for c, hw in ((16, 50), (1600, 5)))
    assert (large.depthwise_outputs, large.depthwise_channels) == (40000, 16)
    assert (small.depthwise_outputs, small.depthwise_channels) == (40000, 1600)
    times = [kernel_time(k, truth) for k in (large, small)]
    assert [t.bound for t in times] == ["compute", "compute"] and times[0].flops == times[1].flops
    assert times[1].ms - times[0].ms == pytest.approx((1600 - 16) * 50.0 * 1e-6)
    # the probe's chains timed on a device with those costs give them back
    data = base.model_dump(mode="json", exclude_none=True)
    graphs = [lowered_graph(depthwise_model(shape), [shape]) for shape in DEPTHWISE_INPUTS]
    chains = [(g, sum(t.ms for k, t in zip(g.kernels, estimate_graph(g, truth).kernels, strict=True) if k.op in ANCHORS))
              for g in graphs]
    assert fit_depthwise(chains, data) == pytest.approx([1.0, 50.0], rel=0.1)
    # a one-group convolution pays neither
    dense = lowered_graph(_conv(16, 32, 3, 1, 56), [(1, 16, 56, 56)]).kernels[0]
    assert kernel_time(dense, truth).ms == kernel_time(dense, base).ms


def test_the_depthwise_fit_keeps_the_cost_that_explains_the_chains_when_one_chain_ran_no_slower_than_its_estimate():
    """A large map's chain timed no slower than its estimate without depthwise costs (its time hidden under
    memory traffic, or a fast run) leaves the small maps' excess to explain: a per-plane cost alone does, so the
    fit keeps it rather than a per-output cost fitted to the large chain's zero."""
    from edgeprune.probe.chains import DEPTHWISE_INPUTS, depthwise_model
    from edgeprune.probe.fit import fit_depthwise

    base = load_profile("x86-avx2")
    eff = base.efficiency.model_copy(update={"depthwise_channel_ns_by_precision": {"fp32": 50.0}})
    truth = base.model_copy(update={"efficiency": eff})
    data = base.model_dump(mode="json", exclude_none=True)

    def products_ms(graph, profile) -> float:
        return sum(t.ms for k, t in zip(graph.kernels, estimate_graph(graph, profile).kernels, strict=True)
                   if k.op in ANCHORS)

    graphs = [lowered_graph(depthwise_model(shape), [shape]) for shape in DEPTHWISE_INPUTS]
    chains = [(graphs[0], products_ms(graphs[0], base))] + [(g, products_ms(g, truth)) for g in graphs[1:]]
    per_output, per_plane = fit_depthwise(chains, data)
    assert per_plane == pytest.approx(50.0, rel=0.2) and per_output == 0.0
    # with that fit the small and middle maps' chains are estimated within 15% of their times (a per-output cost
    # fitted to the large chain's zero left the small one at a fifth of its time)
    fitted = base.model_copy(update={"efficiency": base.efficiency.model_copy(update={
        "depthwise_ns_by_precision": {"fp32": per_output}, "depthwise_channel_ns_by_precision": {"fp32": per_plane}})})
    for graph, ms in chains[1:]:
        assert products_ms(graph, fitted) == pytest.approx(ms, rel=0.15)


def test_a_layer_whose_size_stays_unknown_leaves_no_estimate_to_pass_a_budget_with(tmp_path):
    """An operator no shape inference follows hides the size of the product after it: the estimate would
    count none of its arithmetic, a lower bound a budget must not be proven with."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeprune.measure.latency import estimate_latency
    from edgeprune.profile import load_profile

    w = numpy_helper.from_array(np.ones((16, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Opaque", ["x"], ["y"], domain="com.example"), helper.make_node("MatMul", ["y", "w"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "opaque.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              path)
    fields = estimate_latency(path, path, [(1, 16)], load_profile("jetson-orin-nano"), None)
    assert fields["estimated_ms"] is None and "stayed unknown" in fields["estimate"]["note"]


def test_a_transformer_whose_positions_are_sliced_to_the_sequence_is_sized_in_full(tmp_path):
    """BERT slices its position ids to the input's length, which ONNX's own shape inference loses;
    every matrix product is sized all the same (ONNX Runtime's symbolic inference follows it)."""
    import torch
    import transformers as hf

    from edgeprune.backends.onnx_tools.export import export_onnx
    from edgeprune.measure.estimate import estimate_onnx
    from edgeprune.profile import load_profile

    config = hf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           vocab_size=512, num_labels=2)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf.BertForSequenceClassification(config).eval()

        def forward(self, ids):
            return self.model(input_ids=ids).logits

    path = export_onnx(Logits().eval(), (torch.randint(0, 512, (1, 32)),), tmp_path / "bert.onnx")
    est = estimate_onnx(path, [(1, 32)], load_profile("x86-avx2"))
    assert est.unsized_layers == ()
    # 2 layers x 32 tokens x (4 projections 64x64 + FFN 2 x 64x128) x 2 FLOPs, plus attention: at least that
    assert est.flops >= 2 * 32 * (4 * 64 * 64 + 2 * 64 * 128) * 2


def test_shapes_nobody_can_infer_leave_nothing_in_the_working_folder(tmp_path, monkeypatch):
    # ONNX Runtime's symbolic inference saves a graph it cannot finish, with its weights, where it runs
    from edgeprune.measure.graph_index import with_input_shapes

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    nodes = [helper.make_node("Mystery", ["x"], ["y"], domain="custom.ops"), helper.make_node("MatMul", ["y", "w"], ["z"])]
    model = _model(nodes, [_f32("x", ["batch", 64])], [_f32("z", None)], [weight])
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    monkeypatch.chdir(tmp_path)
    inferred = with_input_shapes(model, [(1, 64)])
    assert list(tmp_path.iterdir()) == []
    assert [d.dim_value for d in inferred.graph.input[0].type.tensor_type.shape.dim] == [1, 64]


def test_an_embedding_lookup_moves_the_rows_it_reads_not_its_table():
    def lookup_bytes(vocab: int, tokens: int) -> float:
        table = numpy_helper.from_array(np.zeros((vocab, 64), np.float32), "table")
        ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, tokens])
        model = _model([helper.make_node("Gather", ["table", "ids"], ["y"])], [ids], [_f32("y", [1, tokens, 64])],
                       [table])
        (kernel,) = lowered_graph(model, [(1, tokens)]).launched
        return kernel.weight_bytes

    # 16 rows of 64 floats read, whether the table holds 50 thousand rows or 100
    assert lookup_bytes(50_000, 16) == lookup_bytes(100, 16) == 16 * 64 * 4
    # a lookup wider than its table reads the table (rows read twice stay in cache)
    assert lookup_bytes(4, 16) == 4 * 64 * 4
