"""What bounds the default text model on this CPU: the matmul kernels available to it, and where
a run's time goes.

A measurement for docs/performance-model.md ("What bounds the model on AVX2"), not part of the
service or of `make bench`. One thread, best of 7 rounds of 10 runs.

    .venv/bin/python bench/prototypes/matmul_kernels.py            # kernels and op shares
    .venv/bin/python bench/prototypes/matmul_kernels.py --kernels  # kernels only
    .venv/bin/python bench/prototypes/matmul_kernels.py --engine-mixed  # needs .venv-tools

Kernels, at the model's three weight shapes (256 tokens × 384 → 1,536, 1,536 → 384, 384 → 384):
- ONNX Runtime fp32 `MatMul`;
- ONNX Runtime `MatMulInteger`, uint8 × int8 (what the shipped model's `MatMulIntegerToFloat`
  runs) and uint8 × uint8;
- ONNX Runtime `MatMulNBits` (4- and 8-bit weights; accuracy level 0: float compute, 4: int8);
- OpenVINO fp32, and int8-compressed weights with and without its dynamic activation
  quantisation (`DYNAMIC_QUANTIZATION_GROUP_SIZE`).
Then ONNX Runtime's profiler on the shipped model: each operator type's share of kernel time.

``--engine-mixed``: the default deployment's backend alone (no queue, no HTTP; as many threads
as the service has inference workers, requests of 32) on `make bench`'s mixed-length set,
against sentence-transformers fp32 (bench/reference.py) in 5 interleaved rounds.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "model.onnx"
SHAPES = ((256, 384, 1536), (256, 1536, 384), (256, 384, 384))   # (M, K, N)
RUNS = ((1, 256), (1, 160), (1, 64), (2, 128), (8, 32))          # (rows, tokens)


def best_seconds(run, rounds: int = 7, per_round: int = 10) -> float:
    for _ in range(5):
        run()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            run()
        best = min(best, (time.perf_counter() - t) / per_round)
    return best


def ort_session(node, a_type, y_type, m: int, k: int, n: int, inits, domain: str = ""):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def ort_gops(kind: str, m: int, k: int, n: int) -> float:
    rng = np.random.default_rng(0)
    if kind == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        sess = ort_session(helper.make_node("MatMul", ["A", "W"], ["Y"]), TensorProto.FLOAT,
                           TensorProto.FLOAT, m, k, n, [w])
        a = rng.standard_normal((m, k)).astype(np.float32)
    elif kind in ("u8s8", "u8u8"):
        weights = (rng.integers(-64, 64, (k, n)).astype(np.int8) if kind == "u8s8"
                   else rng.integers(0, 256, (k, n)).astype(np.uint8))
        sess = ort_session(helper.make_node("MatMulInteger", ["A", "W"], ["Y"]),
                           TensorProto.UINT8, TensorProto.INT32, m, k, n,
                           [numpy_helper.from_array(weights, "W")])
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    else:                                    # "nbits<bits>a<accuracy level>"
        bits, level = int(kind[5]), int(kind[7])
        block = 32
        packed = rng.integers(0, 256, (n, k // block, block * bits // 8)).astype(np.uint8)
        scales = (rng.random(n * (k // block)) * 0.01 + 0.001).astype(np.float32)
        node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft",
                                K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
        sess = ort_session(node, TensorProto.FLOAT, TensorProto.FLOAT, m, k, n,
                           [numpy_helper.from_array(packed, "B"),
                            numpy_helper.from_array(scales, "S")], "com.microsoft")
        a = rng.standard_normal((m, k)).astype(np.float32)
    return 2 * m * k * n / best_seconds(lambda: sess.run(None, {"A": a})) / 1e9


def openvino_gops(kind: str, m: int, k: int, n: int) -> float:
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([-1, k], ov.Type.f32, name="A")
    config = {"INFERENCE_NUM_THREADS": "1", "INFERENCE_PRECISION_HINT": "f32",
              "NUM_STREAMS": "1"}
    if kind == "fp32":
        weights = ops.constant(rng.standard_normal((n, k)).astype(np.float32))
    else:                                    # int8 weights, dequantised in the graph
        q = ops.convert(ops.constant(rng.integers(-127, 128, (n, k)).astype(np.int8)),
                        ov.Type.f32)
        weights = ops.multiply(q, ops.constant((rng.random((n, 1)) * 0.01).astype(np.float32)))
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "32" if kind == "w8-dq32" else "0"
    model = ov.Model([ops.matmul(a, weights, False, True)], [a])
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((m, k)).astype(np.float32)
    return 2 * m * k * n / best_seconds(lambda: request.infer({0: x})) / 1e9


def op_shares(rows: int, tokens: int) -> tuple[float, list[tuple[str, float]]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), "matmul_kernels")
    sess = ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 20000, (rows, tokens)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if any(i.name == "token_type_ids" for i in sess.get_inputs()):
        feeds["token_type_ids"] = np.zeros_like(ids)
    seconds = best_seconds(lambda: sess.run(None, feeds), rounds=3)
    path = sess.end_profiling()
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return seconds, [(op, v / total) for op, v in per_op.most_common(6)]


def engine_mixed(rounds: int = 5) -> None:
    import concurrent.futures
    import statistics

    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import bench
    import workloads

    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    w = workloads.build(1024, 256, 1000)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(w, fh)
    ref = bench.Reference(fh.name)
    settings = Settings.from_env({})
    reg = Registry.from_settings(settings)
    backend = reg.backend(reg.default_for("text"))
    backend.encode(w["short"][:64])
    ratios = []
    try:
        for r in range(rounds):
            answer = ref.ask(op="throughput", set="mixed")
            theirs = answer["n"] / answer["seconds"]
            with concurrent.futures.ThreadPoolExecutor(settings.workers) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda c: backend.encode(c, extras={"truncate": "END"}),
                              bench.chunks(w["mixed"], 32)))
                ours = len(w["mixed"]) / (time.perf_counter() - t0)
            ratios.append(ours / theirs)
            print(f"round {r + 1}: sentence-transformers {theirs:.1f}/s, engine {ours:.1f}/s, "
                  f"{ours / theirs:.2f}x", flush=True)
    finally:
        ref.stop()
        os.remove(fh.name)
    print(f"median {statistics.median(ratios):.2f}x")


def main() -> None:
    if "--engine-mixed" in sys.argv:
        engine_mixed()
        return
    for m, k, n in SHAPES:
        row = {kind: ort_gops(kind, m, k, n)
               for kind in ("fp32", "u8s8", "u8u8", "nbits8a0", "nbits8a4", "nbits4a4")}
        row.update({f"openvino-{kind}": openvino_gops(kind, m, k, n)
                    for kind in ("fp32", "w8", "w8-dq32")})
        print(f"{m} x {k} -> {n}, GOPS: " + ", ".join(f"{kk} {v:.0f}" for kk, v in row.items()),
              flush=True)
    if "--kernels" in sys.argv:
        return
    for rows, tokens in RUNS:
        seconds, shares = op_shares(rows, tokens)
        print(f"{rows} x {tokens}: {seconds * 1e3:.1f} ms, {seconds * 1e6 / rows / tokens:.0f} us "
              "a token; " + ", ".join(f"{op} {share:.0%}" for op, share in shares), flush=True)


if __name__ == "__main__":
    main()
