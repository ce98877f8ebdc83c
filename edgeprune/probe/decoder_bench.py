"""What an LLM decoder runs, timed on this machine: grouped-query attention and a decoder of its own.

A decode step streams int4 weight blocks (MatMulNBits at one row) and reads the KV cache
(GroupQueryAttention over the past); a prompt's pass multiplies many rows and attends over
the prompt. Attention is timed alone; the weights' rates are fitted to a whole decoder with
random weights written and run as a build's are (``calibration_decoder``), whose shapes are
its own (width 2048, MLP 8192, 16 heads over 2 of 128), not any model a benchmark checks
the estimate on, so the estimate is judged on models it was not fitted to.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.backends.onnx_tools import runtime as onnx_runtime
from edgeprune.backends.onnx_tools.weight_only import WeightOnly
from edgeprune.host import this_host

# int4 weights as a CPU decoder stores them (edgeprune.llm.onnx_backend.weight_only_for)
INT4_BLOCK = 64
HEADS, KV_HEADS, HEAD = 16, 2, 128
# 8 layers of int4 blocks hold 290 MB: several times a server's last-level cache, as a real decoder's weights are
LAYERS = 8
OPSET = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _session(model: onnx.ModelProto, threads: int | None):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, path)
        return onnx_runtime.session(path, threads or this_host().cores)


class SyntheticDecoder:
    """A ``DecoderSource`` with random weights (fixed seed): the probe's calibration decoder."""

    def __init__(self, layers: int = LAYERS, hidden: int = 2048, ffn: int = 8192, vocab: int = 8000) -> None:
        from edgeprune.backends.onnx_tools.decoder import DecoderShape

        self.shape = DecoderShape("llama", layers, hidden, HEADS, KV_HEADS, HEAD, ffn, vocab, 1e-5, 1024, tied=True)
        self.rng = np.random.default_rng(5)

    def _w(self, out: int, inp: int) -> np.ndarray:
        return (self.rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def embedding(self) -> np.ndarray:
        return self._w(self.shape.vocab, self.shape.hidden)

    def lm_head(self) -> None:
        return None

    def input_norm(self, index: int) -> np.ndarray:
        return np.ones(self.shape.hidden, np.float32)

    def final_norm(self) -> np.ndarray:
        return np.ones(self.shape.hidden, np.float32)

    def rotary(self) -> tuple[np.ndarray, np.ndarray]:
        angles = np.outer(np.arange(self.shape.context), 10000.0 ** (-np.arange(0, HEAD, 2) / HEAD))
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def layer(self, index: int):
        from edgeprune.backends.onnx_tools.decoder import LayerWeights

        h, f = self.shape.hidden, self.shape.ffn
        return LayerWeights(q=self._w(HEADS * HEAD, h), k=self._w(KV_HEADS * HEAD, h), v=self._w(KV_HEADS * HEAD, h),
                            o=self._w(h, HEADS * HEAD), post_norm=np.ones(h, np.float32), gate=self._w(f, h),
                            up=self._w(f, h), down=self._w(h, f))


def time_calibration_decoder(folder: Path, prompt: int, gen: int, threads: int | None, layers: int = LAYERS) -> dict:
    """Returns the calibration decoder's median prompt pass and decode step (seconds) and what it stores.

    Written into ``folder`` as a build writes a CPU's int4 decoder, then run by the build's
    own generation loop at ``threads``. Fewer ``layers`` probe quicker and less exactly (a
    smaller model sits more in cache than a real one).
    """
    from edgeprune.backends.onnx_tools.decoder import write_decoder
    from edgeprune.backends.onnx_tools.genai import write_genai_config
    from edgeprune.device.decode_loop import Decoder, time_generation

    source = SyntheticDecoder(layers)
    files = write_decoder(source, folder, "int4", WeightOnly(bits=4, block_size=INT4_BLOCK, symmetric=True,
                                                             algorithm="rtn", accuracy_level=4))
    write_genai_config(folder, source.shape)
    runs = time_generation(Decoder(folder, threads or this_host().cores, prompt + gen), prompt, gen, repeats=3)
    s = source.shape
    parts = files.details["bytes_by_part"]
    return {"prefill_s": float(np.median([r.prefill_s for r in runs])),
            "decode_s": float(np.median([d for r in runs for d in r.decode_s])),
            "weight_bytes": sum(v for k, v in parts.items() if k not in ("embedding", "rotary", "graph")),
            "matmul_params": s.layers * (s.hidden * (HEADS + 2 * KV_HEADS) * HEAD + HEADS * HEAD * s.hidden
                                         + 3 * s.hidden * s.ffn) + s.vocab * s.hidden,
            "layers": s.layers, "depth": prompt + gen // 2, "prompt": prompt}


def attention_gflops(seconds: float, tokens: int, past: int, threads: int | None = None) -> float:
    """Returns GroupQueryAttention's rate over ``tokens`` new tokens on ``past`` cached ones, in GFLOP/s.

    FLOPs: 2 x heads x head size for the scores and as many for the weighted values, per pair
    of a query and a key it attends to (the prompt's pairs are causal, about half of them).
    """
    width = (HEADS + 2 * KV_HEADS) * HEAD
    total = past + tokens
    rng = np.random.default_rng(4)
    cos = np.cos(np.outer(np.arange(total), np.ones(HEAD // 2))).astype(np.float32)
    sin = np.sin(np.outer(np.arange(total), np.ones(HEAD // 2))).astype(np.float32)
    kv = [1, KV_HEADS, past, HEAD]
    node = helper.make_node("GroupQueryAttention", ["q", "", "", "pk", "pv", "seqlens", "total", "cos", "sin"],
                            ["y", "k", "v"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS,
                            scale=HEAD ** -0.5, do_rotary=1, rotary_interleaved=0)
    graph = helper.make_graph(
        [node], "gqa",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, tokens, width]),
         helper.make_tensor_value_info("pk", TensorProto.FLOAT, kv),
         helper.make_tensor_value_info("pv", TensorProto.FLOAT, kv),
         helper.make_tensor_value_info("seqlens", TensorProto.INT32, [1]),
         helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(cos, "cos"), onnx.numpy_helper.from_array(sin, "sin")])
    sess = _session(helper.make_model(graph, opset_imports=OPSET), threads)
    feed = {"q": rng.standard_normal((1, tokens, width)).astype(np.float32),
            "pk": rng.standard_normal(kv).astype(np.float32), "pv": rng.standard_normal(kv).astype(np.float32),
            "seqlens": np.array([total - 1], np.int32), "total": np.array(total, np.int32)}
    pairs = tokens * past + tokens * (tokens + 1) / 2
    return 4 * HEADS * HEAD * pairs / median_seconds(lambda: sess.run(None, feed), seconds) / 1e9


def median_seconds(fn, seconds: float) -> float:
    """Returns the median of repeated runs in seconds: a decoder's figures are medians too."""
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
