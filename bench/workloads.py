"""Benchmark workloads, deterministic and offline (stdlib docstrings, odd positions: the
calibration uses the even ones)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.corpus import stdlib_docstrings  # noqa: E402


def build(n_short: int, n_mixed: int, n_quality: int) -> dict[str, list[str]]:
    corpus = stdlib_docstrings()[1::2]
    words = " ".join(corpus).split()
    rng = random.Random(1234)
    # ~15-word sentences
    short = [" ".join(c.split()[:15]) for c in corpus if len(c.split()) >= 15][:n_short]
    # mixed lengths: 5..190 words (up to about the 256-token limit; truncate END beyond)
    mixed = []
    for _ in range(n_mixed):
        k = rng.randint(5, 190)
        start = rng.randrange(0, len(words) - k)
        mixed.append(" ".join(words[start:start + k]))
    # inputs that all reach the 256-token limit (truncated): the largest requests, fairness
    longest = [" ".join(words[(i * 200 + k) % len(words)] for k in range(200))
               for i in range(2048)]
    # quality: held-out docstrings (odd positions, from the end) and a fifth of mixed lengths
    quality = corpus[-(n_quality - n_quality // 5):]
    for _ in range(n_quality // 5):
        k = rng.randint(5, 190)
        start = rng.randrange(0, len(words) - k)
        quality.append(" ".join(words[start:start + k]))
    return {"short": short, "mixed": mixed, "longest": longest, "quality": quality}
