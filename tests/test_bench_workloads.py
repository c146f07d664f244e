"""`make bench`'s fidelity sets are held out from what the int8 models were calibrated on."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

import workloads  # noqa: E402
from measure_minilm_fidelity import calibration_texts, load_tokenizer, retrieval_pairs  # noqa: E402


def _touching_calibration(texts: list[str]) -> list[str]:
    calibration = [" ".join(c.split()) for c in calibration_texts()]
    return [t for t in texts if any(c in " ".join(t.split()) or " ".join(t.split()) in c
                                    for c in calibration)]


def test_the_quality_set_has_no_calibration_text():
    # Before, 12 of the 1,000 texts contained, or were contained in, a calibration text.
    quality = workloads.build(1024, 256, 1000)["quality"]
    assert len(quality) == 1000 and len(set(quality)) == 1000
    assert _touching_calibration(quality) == []


def test_the_retrieval_pairs_are_held_out_and_untruncated():
    pairs = retrieval_pairs()
    queries, documents = pairs["queries"], pairs["documents"]
    assert len(queries) == len(documents) >= 400
    assert len(set(queries)) == len(queries) and len(set(documents)) == len(documents)
    assert _touching_calibration(queries + documents) == []
    tok = load_tokenizer()
    tok.no_truncation()
    assert max(len(tok.encode(t).ids) for t in queries + documents) <= 256
