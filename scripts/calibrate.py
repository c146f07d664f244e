"""One-time job: per-dimension int8/uint8 calibration ranges for a text deployment.

The corpus is built offline from the docstrings of Python's standard library (first paragraph
of every module, class and function docstring of 5-60 words, de-duplicated, ordered by sha1 so
the selection is stable). The served model embeds the calibration half; ``lo``/``hi`` per
dimension are the 0.1 % / 99.9 % quantiles. The other half is held out to report how often a
value would be clipped. Runs in the runtime virtualenv (no torch):

    .venv/bin/python scripts/calibrate.py [--deployment all-MiniLM-L6-v2] [--count 4000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedding_core.registry import Registry  # noqa: E402
from embedding_core.settings import Settings  # noqa: E402
from tools.corpus import stdlib_docstrings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployment", default="all-MiniLM-L6-v2")
    parser.add_argument("--count", type=int, default=4000, help="calibration sentences")
    parser.add_argument("--quantile", type=float, default=0.001)
    args = parser.parse_args()

    registry = Registry.from_settings(Settings.from_env({}))
    dep = registry.find(args.deployment)
    assert dep is not None and dep.calibration_path is not None, "deployment needs a calibration path"
    corpus = stdlib_docstrings()
    calib, held_out = corpus[0::2][: args.count], corpus[1::2][: args.count // 4]
    backend = registry.backend(dep)
    vecs = backend.encode(calib, extras={"truncate": "END"}).vectors
    test = backend.encode(held_out, extras={"truncate": "END"}).vectors

    ranges = {}
    for size in dep.supported_dimensions:
        v = vecs[:, :size] / np.linalg.norm(vecs[:, :size], axis=1, keepdims=True)
        lo = np.quantile(v, args.quantile, axis=0).astype(np.float32)
        hi = np.quantile(v, 1 - args.quantile, axis=0).astype(np.float32)
        # Constant (dead) dimensions: give them a small range in which the constant maps to
        # exactly 128 (int8 0), far from a rounding boundary.
        dead = (hi - lo) < 1e-4
        mid = (lo + hi) / 2
        lo = np.where(dead, mid - 128 / 255 * 1e-3, lo).astype(np.float32)
        hi = np.where(dead, mid + 127 / 255 * 1e-3, hi).astype(np.float32)
        t = test[:, :size] / np.linalg.norm(test[:, :size], axis=1, keepdims=True)
        clipped = float(np.mean((t < lo) | (t > hi)))
        ranges[str(size)] = {"lo": [round(float(x), 7) for x in lo],
                             "hi": [round(float(x), 7) for x in hi],
                             "constant_dimensions": np.flatnonzero(dead).tolist(),
                             "held_out_clipped_fraction": round(clipped, 6)}
        print(f"{dep.name} size {size}: held-out values outside [lo, hi]: {clipped:.4%}; "
              f"constant dimensions: {np.flatnonzero(dead).tolist()}",
              file=sys.stderr)
    out = {
        "_provenance": {
            "producer": "scripts/calibrate.py",
            "deployment": dep.name,
            "model_sha256": dep.files["model"].sha256,
            "corpus": "first paragraphs of Python standard-library docstrings (5-60 words), "
                      f"Python {platform.python_version()}, even positions in sha1 order",
            "sentences": len(calib),
            "held_out_sentences": len(held_out),
            "quantiles": [args.quantile, 1 - args.quantile],
            "formula": "uint8 = clip(rint((x-lo)/(hi-lo)*255), 0, 255); int8 = uint8 - 128",
            "license": "derived data; Python docstrings are under the PSF License",
        },
        "ranges": ranges,
    }
    path = dep.calibration_path
    path.write_bytes((json.dumps(out, indent=1) + "\n").encode("utf-8"))
    print(f"wrote {path.relative_to(ROOT)}: {path.stat().st_size} bytes, sha256 "
          f"{hashlib.sha256(path.read_bytes()).hexdigest()} (put both in registry.json and "
          "PROVENANCE.md)", file=sys.stderr)


if __name__ == "__main__":
    main()
