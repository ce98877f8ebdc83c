"""The small networks the probe times to calibrate the estimator: fp32 ONNX models with fixed random weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

# The representative network the compute efficiency is calibrated on: a batch-1 CNN backbone
# of 3x3 convolutions (16 to 256 channels, 64x64 down to 8x8), each followed by a ReLU.
CALIBRATION_CNN = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))
# Two input sizes: at 64x64 every activation fits the caches, at 192x192 the first layers'
# do not; convolutions run at visibly different efficiency in the two regimes, and models
# span both (a 32x32 digits CNN, a 224x224 ResNet).
CALIBRATION_INPUTS = ((1, 16, 64, 64), (1, 16, 192, 192))
# An image's first layer's costs are fitted on RGB stems at 224x224 (3 channels a tap), each followed by a global
# average pool; two windows and widths so the cost per output and per output pixel and window row come apart:
# 3x3 stride 2 to 32 channels (as MobileNet and EfficientNet open) and 5x5 stride 2 to 16. Their time also holds
# the layout change a runtime makes before its first convolution.
STEM_INPUT = (1, 3, 224, 224)
STEMS = ((32, 3, 2), (16, 5, 2))  # out channels, kernel, stride
# A depthwise layer's cost per output and per channel plane is fitted on chains of four 3x3 depthwise convs with
# ReLU (the second of stride 2) on wide (64 channels at 112x112), middle (256 at 28x28) and small maps (960 at 5x5).
DEPTHWISE_INPUTS = ((1, 64, 112, 112), (1, 256, 28, 28), (1, 960, 5, 5))
# What handing a kernel's work to the other threads can cost at times is timed on a chain of sixteen 1x1
# convolutions, 96 channels at 20x20: large enough that ONNX Runtime splits each over its threads, small enough
# (about 35 us each on two AVX-512 cores) that the hand-off is a visible share. On a 2-vCPU VM, in its slow
# spells, each such kernel took 20-27 us longer (a MatMul chain too), whatever its size.
HANDOFF_INPUT = (1, 96, 20, 20)
HANDOFF_LAYERS = 16
# The pointwise convolutions the per-output cost of every one-group convolution is fitted on: chains
# of 1x1 convolutions with ReLU that expand six times and project back, as a mobile network's inverted
# residuals do, at two widths (16 channels at 80x80, 32 at 40x40): they reduce over so few channels
# that storing each output costs as much as its arithmetic.
POINTWISE_INPUTS = ((1, 16, 80, 80), (1, 32, 40, 40))
POINTWISE_EXPAND = 6
# The operators between a transformer's products (bias and residual Adds, LayerNormalization, GELU,
# Softmax, the heads' Reshapes and Transposes) cost more per element than their memory traffic, and
# more inside a model, where the products between them evict their tensors from the caches, than
# alone: their per-element cost is fitted on two encoder layers of the probe's own (width 256, 4
# heads, FFN 1024, the products charged at the CNN's compute factor), at 64 and 256 tokens.
BETWEEN_INPUTS = ((1, 64, 256), (1, 256, 256))
BETWEEN_HEADS, BETWEEN_FFN, BETWEEN_LAYERS = 4, 1024, 2


def _conv_chain(name: str, shape: tuple[int, ...], layers, seed: int, kernel: int = 3) -> onnx.ModelProto:
    """Returns ``kernel`` x ``kernel`` convolutions, each followed by a ReLU, as an fp32 ONNX model with fixed
    random weights; ``layers`` are (input channels, output channels, stride, groups)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout, stride, groups) in enumerate(layers):
        fan_in = kernel * kernel * cin // groups
        w = (rng.standard_normal((cout, cin // groups, kernel, kernel)) * np.sqrt(2 / fan_in)).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"),
                  onnx.numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[kernel, kernel],
                                   pads=[kernel // 2] * 4, strides=[stride, stride], group=groups),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calibration_cnn(shape: tuple[int, ...] = CALIBRATION_INPUTS[0]) -> onnx.ModelProto:
    """Returns the calibration CNN for an input shape as an fp32 ONNX model with fixed random weights."""
    return _conv_chain("calibration_cnn", shape, [(cin, cout, stride, 1) for cin, cout, stride in CALIBRATION_CNN], 0)


def stem_model(stem: tuple[int, int, int]) -> onnx.ModelProto:
    """Returns an RGB stem (convolution, ReLU, global average pool) as an fp32 ONNX model."""
    cout, k, stride = stem
    cin = STEM_INPUT[1]
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (k * k * cin))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], pads=[k // 2] * 4,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "calibration_stem",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(STEM_INPUT))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w"),
                               onnx.numpy_helper.from_array(np.zeros(cout, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def depthwise_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns a chain of 3x3 depthwise convolutions with ReLU at an input shape, as an fp32 ONNX model."""
    c = shape[1]
    return _conv_chain("calibration_depthwise", shape, [(c, c, stride, c) for stride in (1, 2, 1, 1)], 5)


def pointwise_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns 1x1 convolutions with ReLU that expand an input's channels and project them back, twice, fp32."""
    c, wide = shape[1], shape[1] * POINTWISE_EXPAND
    return _conv_chain("calibration_pointwise", shape, [(c, wide, 1, 1), (wide, c, 1, 1)] * 2, 7, kernel=1)


def handoff_model() -> onnx.ModelProto:
    """Returns the hand-off chain: ``HANDOFF_LAYERS`` 1x1 convolutions with ReLU at ``HANDOFF_INPUT``, fp32."""
    c = HANDOFF_INPUT[1]
    return _conv_chain("calibration_handoff", HANDOFF_INPUT, [(c, c, 1, 1)] * HANDOFF_LAYERS, 11, kernel=1)


def between_model(shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns encoder layers (post-norm, GELU) over an input of (batch, tokens, width), fp32, random weights."""
    _, tokens, width = shape
    heads, ffn = BETWEEN_HEADS, BETWEEN_FFN
    rng = np.random.default_rng(6)
    inits, nodes = [], []

    def const(name: str, value) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, np.float32 if not isinstance(value, tuple)
                                                             else np.int64), name))
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, name: str, cin: int, cout: int) -> str:
        w = const(f"{name}.w", rng.standard_normal((cin, cout)) / np.sqrt(cin))
        return op("Add", [op("MatMul", [x, w], f"{name}.mm"), const(f"{name}.b", rng.standard_normal(cout) * 0.02)],
                  f"{name}.out")

    def norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.g", np.ones(width)), const(f"{name}.b", np.zeros(width))],
                  f"{name}.out", axis=-1)

    # the batch axis free, as edgeprune exports models (ONNX Runtime fuses less around free axes): 0 keeps it
    split, merged = const("split", (0, tokens, heads, width // heads)), const("merged", (0, tokens, width))
    const("scale", 1 / np.sqrt(width // heads))
    const("sqrt2", 2 ** 0.5), const("one", 1.0), const("half", 0.5)
    x = "x"
    for i in range(BETWEEN_LAYERS):
        def heads_of(t: str, perm: list[int], name: str) -> str:
            return op("Transpose", [op("Reshape", [t, split], f"{name}.r")], f"{name}.t", perm=perm)

        q = heads_of(linear(x, f"l{i}.q", width, width), [0, 2, 1, 3], f"l{i}.qh")
        k = heads_of(linear(x, f"l{i}.k", width, width), [0, 2, 3, 1], f"l{i}.kh")
        v = heads_of(linear(x, f"l{i}.v", width, width), [0, 2, 1, 3], f"l{i}.vh")
        scores = op("Softmax", [op("Mul", [op("MatMul", [q, k], f"l{i}.qk"), "scale"], f"l{i}.s")], f"l{i}.p", axis=-1)
        context = op("Reshape", [op("Transpose", [op("MatMul", [scores, v], f"l{i}.pv")], f"l{i}.ct", perm=[0, 2, 1, 3]),
                                 merged], f"l{i}.c")
        x = norm(op("Add", [x, linear(context, f"l{i}.o", width, width)], f"l{i}.res1"), f"l{i}.n1")
        h = linear(x, f"l{i}.fc1", width, ffn)
        erf = op("Add", [op("Erf", [op("Div", [h, "sqrt2"], f"l{i}.d")], f"l{i}.e"), "one"], f"l{i}.e1")
        gelu = op("Mul", [op("Mul", [h, erf], f"l{i}.m"), "half"], f"l{i}.g")
        x = norm(op("Add", [x, linear(gelu, f"l{i}.fc2", ffn, width)], f"l{i}.res2"), f"l{i}.n2")
    graph = helper.make_graph(nodes, "calibration_encoder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", tokens, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
