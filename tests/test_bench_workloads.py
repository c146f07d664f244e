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


def test_the_workloads_are_what_the_bench_reports():
    assert len(workloads.build(100, 0, 0)["short"]) == 100
    w = workloads.build(1024, 256, 0)         # as many ~15-word sentences as there are: 538
    assert {len(t.split()) for t in w["short"]} == {15}
    assert len(w["mixed"]) == 256 and all(5 <= len(t.split()) <= 190 for t in w["mixed"])
    assert len(w["longest"]) == 2048
    tok = load_tokenizer()
    tok.no_truncation()
    # (nearly) every one at the 256-token limit: the largest request is 262,123 tokens on Python
    # 3.11 (5 of the first 1,024 have 247-255), 262,086 on 3.14 (9 have 246-255), not 262,144
    longest = [min(len(e.ids), 256) for e in tok.encode_batch(w["longest"][:1024])]
    assert min(longest) > 240 and sum(longest) >= 0.9995 * 1024 * 256


def test_the_quality_set_is_held_out_from_the_output_range_calibration():
    """scripts/calibrate.py fits the int8/binary output ranges on the docstrings at even positions;
    the bench's held-out docstrings are at odd ones."""
    from tools.corpus import stdlib_docstrings

    calibrate_py = set(stdlib_docstrings()[0::2][:4000])
    quality = workloads.build(0, 0, 1000)["quality"]
    assert [t for t in quality if t in calibrate_py] == []
