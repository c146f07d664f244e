"""Pooling and normalisation as small vectorised functions."""

from __future__ import annotations

import numpy as np


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors where ``mask`` is 1: [b, s, d], [b, s] -> [b, d]."""
    m = mask.astype(hidden.dtype)[:, :, None]
    summed = np.einsum("bsd,bsx->bd", hidden, m) if hidden.shape[0] else hidden.sum(1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    return summed / counts


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


POOLING = {"mean": mean_pool}
