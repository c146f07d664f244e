"""Time the shipped graph's per-row quantisation chains as ONNX Runtime runs them (one kernel
per operator) against the same formulas fused into one C loop per row (fused_chains.c).

A measurement for a design decision (docs/performance-model.md, "A fused kernel, prototyped"),
not part of the service or of `make bench`. Needs gcc; one thread; best of 7 rounds of 50.

    .venv/bin/python bench/prototypes/fused_chains.py
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
CFLAGS = ["-O3", "-march=x86-64-v3", "-fopenmp-simd", "-ffast-math", "-shared", "-fPIC"]
SHAPES = ((1, 256), (1, 128), (8, 32), (2, 27), (1, 12))   # (rows, tokens) of one run
FFN, HIDDEN = 1536, 384
FFN_ZERO_POINT = 16       # the FFN-output matmul's activation zero point in the shipped model


def build() -> ctypes.CDLL:
    out = Path(tempfile.mkdtemp()) / "fused_chains.so"
    subprocess.run(["gcc", *CFLAGS, str(HERE / "fused_chains.c"), "-o", str(out), "-lm"],
                   check=True)
    return ctypes.CDLL(str(out))


def session(nodes, inputs, outputs, inits) -> ort.InferenceSession:
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.UINT8 if o == "q" else TensorProto.FLOAT, None)
         for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ffn_chain_ort(rows: int, tokens: int, z: int, bias: np.ndarray) -> ort.InferenceSession:
    """Rescale, FastGelu, then the asymmetric row scale and QuantizeLinear (9 nodes)."""
    n = helper.make_node
    return session([
        n("Mul", ["x", "rs"], ["m"]), n("FastGelu", ["m", "b"], ["g"], domain="com.microsoft"),
        n("ReduceMax", ["g", "ax"], ["mx"]), n("ReduceMin", ["g", "ax"], ["mn"]),
        n("Mul", ["mx", "hiK"], ["hi"]), n("Mul", ["mn", "loK"], ["lo"]),
        n("Max", ["hi", "lo"], ["s0"]), n("Max", ["s0", "tiny"], ["s"]),
        n("QuantizeLinear", ["g", "s", "zp"], ["q"], axis=-1, block_size=bias.size)],
        ["x", "rs"], ["q", "s"],
        {"b": bias, "ax": np.array([-1], np.int64), "hiK": np.array(1 / (255 - z), np.float32),
         "loK": np.array(-1 / z, np.float32), "tiny": np.array(1e-30, np.float32),
         "zp": np.full((rows, tokens, 1), z, np.uint8)})


def row_quant_ort(rows: int, tokens: int, smooth: np.ndarray) -> ort.InferenceSession:
    """SmoothQuant multiply, then the symmetric row scale and QuantizeLinear (6 nodes)."""
    n = helper.make_node
    return session([
        n("Mul", ["x", "sm"], ["xs"]), n("Abs", ["xs"], ["a"]), n("ReduceMax", ["a", "ax"], ["mx"]),
        n("Mul", ["mx", "inv"], ["s0"]), n("Max", ["s0", "tiny"], ["s"]),
        n("QuantizeLinear", ["xs", "s", "zp"], ["q"], axis=-1, block_size=smooth.size)],
        ["x"], ["q", "s"],
        {"sm": smooth, "ax": np.array([-1], np.int64), "inv": np.array(1 / 127, np.float32),
         "tiny": np.array(1e-30, np.float32), "zp": np.full((rows, tokens, 1), 128, np.uint8)})


def best_us(fn) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(50):
            fn()
        best = min(best, (time.perf_counter() - t0) / 50)
    return best * 1e6


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def main() -> None:
    lib = build()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, gcc {' '.join(CFLAGS)}")
    print("| run | FFN chain: ORT | fused | × | q equal | 384 chain: ORT | fused | × | q, scale equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, tokens in SHAPES:
        m = rows * tokens
        bias = (rng.standard_normal(FFN) * 0.1).astype(np.float32)
        x = (rng.standard_normal((rows, tokens, FFN)) * 300).astype(np.float32)
        rs = (rng.random((rows, tokens, 1)) * 0.01 + 0.001).astype(np.float32)
        s = ffn_chain_ort(rows, tokens, FFN_ZERO_POINT, bias)
        q_ref, s_ref = s.run(None, {"x": x, "rs": rs})
        q, qs, tmp = np.empty((m, FFN), np.uint8), np.empty(m, np.float32), np.empty(FFN, np.float32)
        args = (ptr(x), ptr(rs), ptr(bias), ctypes.c_int(m), ctypes.c_int(FFN),
                ctypes.c_int(FFN_ZERO_POINT), ptr(q), ptr(qs), ptr(tmp))
        lib.ffn_chain(*args)
        ffn_equal = np.mean(q == q_ref.reshape(m, FFN))
        t_ort, t_c = best_us(lambda: s.run(None, {"x": x, "rs": rs})), best_us(lambda: lib.ffn_chain(*args))

        smooth = (rng.random(HIDDEN) + 0.5).astype(np.float32)
        x2 = rng.standard_normal((rows, tokens, HIDDEN)).astype(np.float32)
        s2 = row_quant_ort(rows, tokens, smooth)
        q2_ref, s2_ref = s2.run(None, {"x": x2})
        q2, qs2 = np.empty((m, HIDDEN), np.uint8), np.empty(m, np.float32)
        args2 = (ptr(x2), ptr(smooth), ctypes.c_int(m), ctypes.c_int(HIDDEN), ptr(q2), ptr(qs2))
        lib.row_quant(*args2)
        same2 = np.array_equal(q2, q2_ref.reshape(m, HIDDEN)) and np.array_equal(qs2, s2_ref.ravel())
        t2_ort, t2_c = best_us(lambda: s2.run(None, {"x": x2})), best_us(lambda: lib.row_quant(*args2))
        print(f"| {rows} × {tokens} | {t_ort:.0f} µs | {t_c:.0f} µs | {t_ort / t_c:.1f} | "
              f"{100 * ffn_equal:.4f} % | {t2_ort:.0f} µs | {t2_c:.0f} µs | {t2_ort / t2_c:.1f} | "
              f"{'yes' if same2 else 'no'} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
