"""`make bench`'s fidelity sets are held out from what the int8 models were calibrated on."""

from __future__ import annotations

import json
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


def test_the_calibration_texts_are_those_the_default_model_was_calibrated_on():
    """The checks below exclude calibration_texts() with its default count; the int8 model was
    calibrated on calibration_texts(calib), calib from its configuration (PROVENANCE.md). A
    smaller default would leave calibration texts in the held-out sets unseen by these checks."""
    provenance = (ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "PROVENANCE.md").read_text(
        encoding="utf-8")
    line = next(x for x in provenance.splitlines() if x.startswith("- Configuration: `"))
    calib = json.loads(line.split("`")[1])["calib"]
    assert calibration_texts() == calibration_texts(calib)


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


def test_no_bench_check_is_an_assert():
    """`python -O` (or PYTHONOPTIMIZE in the environment, which the bench's child processes
    inherit) drops assert statements: a refused request timed as a served one (the telemetry
    overhead's blocks, its cold starts), a case over the limits measured. The scripts' checks,
    in their code and in the code they hand to child processes, raise instead."""
    import ast

    found = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                found.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for i, line in enumerate(node.value.splitlines()):
                    if line.lstrip().startswith("assert "):
                        found.append(f"{path.name}:{node.lineno}+{i} (code in a string)")
    assert not found, found
