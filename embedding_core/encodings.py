"""Output sizes and wire encodings of embedding vectors (all vectorised, no per-element loops).

- ``float``: the L2-normalised float32 values.
- ``base64``: base64 of the little-endian float32 bytes of the same vector.
- ``uint8``: ``clip(rint((x - lo) / (hi - lo) * 255), 0, 255)`` with the deployment's fixed
  per-dimension calibration ranges; ``int8`` is ``uint8 - 128``. Fixed ranges make the integers
  of an input independent of the request and the batch.
- ``ubinary``: sign bits (``x > 0``) packed MSB-first into bytes (0..255); ``binary``: the same
  bytes minus 128 (-128..127).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

FORMATS = ("float", "base64", "int8", "uint8", "binary", "ubinary")
CALIBRATED = ("int8", "uint8")
PACKED = ("binary", "ubinary")


def resize(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation to ``dimensions``, then re-normalisation."""
    if dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.ascontiguousarray(cut / np.maximum(norms, 1e-12), dtype=np.float32)


def to_uint8(vectors: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scaled = (vectors.astype(np.float64) - lo) / (hi.astype(np.float64) - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_ubinary(vectors: np.ndarray) -> np.ndarray:
    return np.packbits(vectors > 0, axis=1, bitorder="big")


def to_base64(vectors: np.ndarray) -> list[str]:
    le = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in le]


def encode(vectors: np.ndarray, fmt: str,
           ranges: tuple[np.ndarray, np.ndarray] | None = None) -> list[Any]:
    """One JSON-serialisable value per row (numpy rows are serialised by orjson directly)."""
    if fmt == "float":
        return list(np.ascontiguousarray(vectors, dtype=np.float32))
    if fmt == "base64":
        return to_base64(vectors)
    if fmt in CALIBRATED:
        if ranges is None:
            raise ValueError("calibration ranges required")
        u8 = to_uint8(vectors, *ranges)
        return list(u8 if fmt == "uint8" else (u8.astype(np.int16) - 128).astype(np.int8))
    if fmt in PACKED:
        ub = to_ubinary(vectors)
        return list(ub if fmt == "ubinary" else (ub.astype(np.int16) - 128).astype(np.int8))
    raise ValueError(f"unknown encoding {fmt!r}")
