"""Time the default deployment's long inputs on OpenVINO in bf16 against ONNX Runtime's int8
model on a CPU without AMX, where the service keeps them on ONNX Runtime.

A measurement for a design decision (docs/performance-model.md, "Long inputs on OpenVINO in
bf16"), not part of the service or of `make bench`. AMX is claimed (as tests/conftest.py does for
the tests of that path) so that the backend builds its OpenVINO session; on a CPU with
avx512_bf16 (AMD Zen 4 and 5) OpenVINO then runs bf16 kernels without AMX tiles. One worker, one
thread each; the best of 7 runs of each shape, after one warm-up run.

    .venv/bin/python bench/prototypes/openvino_without_amx.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from embedding_core import openvino_session  # noqa: E402
from embedding_core.registry import Registry  # noqa: E402
from embedding_core.settings import Settings  # noqa: E402
from embedding_core.text import TextBackend  # noqa: E402

SHAPES = [(4, 140), (4, 200), (4, 254), (1, 254), (8, 254)]   # inputs x words (+2 tokens)


def main() -> None:
    flags = openvino_session.cpu_flags()
    print(f"AMX: {openvino_session.AMX_FLAG in flags}, avx512_bf16: {'avx512_bf16' in flags}")
    real = openvino_session.cpu_flags
    openvino_session.cpu_flags = lambda path="/proc/cpuinfo": real(path) | {openvino_session.AMX_FLAG}
    one = {"EMBEDDINGS_INFERENCE_WORKERS": "1", "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}
    settings = Settings.from_env(one)
    registry = Registry.from_settings(settings)
    dep = registry.find("all-MiniLM-L6-v2")
    ov = TextBackend(dep, settings, registry)
    ort = TextBackend(dep, Settings.from_env({**one, "EMBEDDINGS_LONG_INPUT_RUNTIME": "onnxruntime"}),
                      registry)
    assert ov.long is not None and ort.long is None
    rng = np.random.default_rng(1)
    for batch, words in SHAPES:
        ids = [ov.tokenize([rng.integers(1000, 29000, words).tolist()])[0] for _ in range(batch)]
        best = {}
        for name, backend in (("openvino", ov), ("onnxruntime", ort)):
            backend.run(ids)
            times = []
            for _ in range(7):
                start = time.perf_counter()
                backend.run(ids)
                times.append(time.perf_counter() - start)
            best[name] = min(times) * 1e3
        print(f"{batch} x {words + 2} tokens: OpenVINO bf16 {best['openvino']:.1f} ms, "
              f"ONNX Runtime int8 {best['onnxruntime']:.1f} ms, "
              f"OpenVINO's speed {best['onnxruntime'] / best['openvino']:.2f}x")


if __name__ == "__main__":
    main()
