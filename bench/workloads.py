"""Benchmark workloads, deterministic and offline (stdlib docstrings, odd positions: the
output-range calibration, scripts/calibrate.py, uses the even ones). The quality set leaves out
every text that contains, or is contained in, one of the texts the int8 models were calibrated
on (scripts/measure_minilm_fidelity.py's calibration_texts())."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tools.corpus import stdlib_docstrings  # noqa: E402


@functools.lru_cache(maxsize=1)
def _calibration() -> tuple[str, ...]:
    from measure_minilm_fidelity import calibration_texts

    return tuple(" ".join(c.split()) for c in calibration_texts())


def overlaps_calibration(texts: list[str]) -> list[bool]:
    """For each text, whether it contains, or is contained in, a text the int8 models were
    calibrated on (whitespace collapsed, as both corpora are)."""
    calibration = _calibration()
    return [any(c in t or t in c for c in calibration) for t in (" ".join(x.split()) for x in texts)]


def docstring_retrieval() -> dict[str, list[str]]:
    """~500 query/document pairs from held-out docstrings (measure_minilm_fidelity)."""
    from measure_minilm_fidelity import retrieval_pairs

    return retrieval_pairs()


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
    # inputs at the 256-token limit (truncated), nearly all: 5 of the first 1,024 have 247-255
    # tokens, so the largest request is 262,123 tokens: the largest requests, fairness
    longest = [" ".join(words[(i * 200 + k) % len(words)] for k in range(200))
               for i in range(2048)]
    # quality: held-out docstrings (odd positions, from the end) and a fifth of mixed lengths,
    # none containing, or contained in, a calibration text (shared runs of words are not checked),
    # and no text twice (a window can be a whole docstring: one is on Python 3.14)
    quality: list[str] = []
    if n_quality:
        tail = corpus[::-1]
        kept = [t for t, o in zip(tail, overlaps_calibration(tail)) if not o]
        quality = kept[:n_quality - n_quality // 5][::-1]
        windows: list[str] = []
        while len(windows) < n_quality // 5:
            k = rng.randint(5, 190)
            start = rng.randrange(0, len(words) - k)
            window = " ".join(words[start:start + k])
            if window not in quality and window not in windows \
                    and not overlaps_calibration([window])[0]:
                windows.append(window)
        quality += windows
    return {"short": short, "mixed": mixed, "longest": longest, "quality": quality}
