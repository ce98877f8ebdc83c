"""The estimator and ONNX Runtime on this machine, on a profile probed in the same test.

How close the estimate comes to a measurement is a figure of the machine, not a property a
unit test can assert on a shared one: it is benchmarks/estimator_error.py's, with a set held
apart from the fitting, written up in docs/benchmarks.md. Here: the estimate on a probed
profile and the runtime agree on the order of two models whose MACs
differ 4x, the runtime's timed side by side (the bound, 1.5x of a 4x difference, is generous).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeprune.measure.estimate import estimate_onnx
from edgeprune.measure.local import measure_onnx_files
from edgeprune.probe import probe_host, write_profile
from edgeprune.profile import load_profile_file
from edgeprune.timing import Protocol

SHAPE = (1, 1, 32, 32)


def digits_shaped_cnn(widths: tuple[int, int, int]) -> onnx.ModelProto:
    """Returns the digits example's architecture (3x3 conv stages, max pools, a linear head)."""
    w1, w2, w3 = widths
    layers = [(1, w1 // 2), (w1 // 2, w1), (w1, w1), "pool", (w1, w2), (w2, w2), "pool", (w2, w3), (w3, w3)]
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, layer in enumerate(layers):
        if layer == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
            continue
        cin, cout = layer
        inits += [numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((10, w3)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "digits_shaped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_probed_profile_and_ort_both_find_dense_slower_than_structured(tmp_path):
    # the probe's peaks; its calibration is test_profiles.py's (`edgeprune profiles probe` calibrates)
    data = probe_host(name="here", seconds=0.15, calibrate=False, threads=1)
    profile = load_profile_file(write_profile(data, tmp_path / "here.toml"))

    files = {}
    for name, widths in (("dense", (64, 128, 256)), ("structured-0.5", (32, 64, 128))):
        files[name] = tmp_path / f"{name}.onnx"
        onnx.save(digits_shaped_cnn(widths), files[name])
    x = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    measured = {k: s.min_ms for k, s in measure_onnx_files(files, [x], threads=1, protocol=Protocol.quick()).items()}
    estimated = {k: estimate_onnx(p, [SHAPE], profile).ms for k, p in files.items()}
    assert all(ms > 0 for ms in (*estimated.values(), *measured.values())), (estimated, measured)
    assert measured["dense"] > 1.5 * measured["structured-0.5"]
    assert estimated["dense"] > 1.5 * estimated["structured-0.5"]
