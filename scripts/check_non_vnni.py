"""Check a text model on an x86 CPU without VNNI, emulated by QEMU (user mode), against the same
model run natively and the committed sentence-transformers fp32 reference.

    sudo apt-get install qemu-user                  # Debian/Ubuntu: provides qemu-x86_64
    .venv/bin/python scripts/check_non_vnni.py      # the shipped default model, 25 reference texts
    .venv/bin/python scripts/check_non_vnni.py --model other.onnx --heldout 40 --cpu Haswell

Why: ONNX Runtime's MLAS multiplies uint8 activations by int8 weights with VNNI (vpdpbusd,
32-bit sums) where the CPU has it; on AVX2 and AVX-512 CPUs without VNNI it uses vpmaddubsw,
which adds two products in a *saturating 16-bit* register. `qemu-x86_64 -cpu Haswell` (AVX2, no
AVX-512, no VNNI) makes MLAS pick that kernel while running on any x86-64 host. It tests
numerics, not speed (emulation is ~100x slower).

What it does:
1. Probe, under emulation: a MatMulIntegerToFloat with activations 255 and weights 127, 127 in
   rows 0 and 1 must come out wrong (saturated), 64, 64 and 127 at rows 1, 2 must come out right.
   This shows that the emulated CPU runs the saturating kernel and that it pairs rows (2i, 2i+1),
   so the rest of the check means something.
2. The model on the texts, natively and emulated, in length-sorted batches of at most 512
   padded tokens as the service runs them (truncated at 256): cosine to the reference for both
   runs, and cosine between the two runs.

Exit status 0 if the probe saturates as expected and the emulated vectors meet the fidelity bounds
(min >= 0.995, median >= 0.999) and agree with the native ones (cosine >= 0.999); 1 otherwise;
2 if qemu-x86_64 is missing. Runs in the runtime virtualenv plus `onnx` (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
DEFAULT_MODEL = ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "model.onnx"
DATA = ROOT / "tests" / "data"


def texts_and_reference(heldout: int) -> tuple[list[str], np.ndarray]:
    ref = json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))
    texts, vecs = list(ref["texts"]), [np.asarray(ref["embeddings"], np.float32)]
    if heldout:
        h = json.loads((DATA / "minilm_heldout_reference.json").read_text(encoding="utf-8"))
        pick = list(range(0, len(h["texts"]), max(1, len(h["texts"]) // heldout)))[:heldout]
        texts += [h["texts"][i] for i in pick]
        vecs.append(np.stack([np.frombuffer(base64.b64decode(h["embeddings_f32"][i]), "<f4") for i in pick]))
    return texts, np.concatenate(vecs)


def embed(model: Path, texts: list[str], budget: int = 512) -> np.ndarray:
    import onnxruntime as ort

    from measure_minilm_fidelity import load_tokenizer, tokenize

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = {o.name for o in sess.get_outputs()}
    assert "sentence_embedding" in names, "the model must pool in the graph"
    tok = load_tokenizer()
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    order = list(np.argsort(lengths, kind="stable"))
    out = np.zeros((len(texts), 384), np.float32)
    while order:    # as the service batches: sorted by length, at most `budget` padded tokens
        idx = [order.pop(0)]
        while order and (len(idx) + 1) * min(lengths[order[0]], 256) <= budget and len(idx) < 32:
            idx.append(order.pop(0))
        out[idx] = sess.run(["sentence_embedding"], tokenize(tok, [texts[j] for j in idx]))[0]
    return out


def probe() -> dict[str, float]:
    """Max |error| of a 64x16 uint8 x int8 product for weight patterns that do or do not
    overflow a 16-bit pair sum when every activation is 255."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n, m = 64, 16, 32
    res = {}
    for name, rows in {"127+127 at rows 0,1 (same pair)": {0: 127, 1: 127},
                       "64+64 at rows 0,1 (pair sum 128)": {0: 64, 1: 64},
                       "127+127 at rows 1,2 (different pairs)": {1: 127, 2: 127}}.items():
        w = np.zeros((k, n), np.int8)
        for r, v in rows.items():
            w[r] = v
        inits = [numpy_helper.from_array(w, "B"), numpy_helper.from_array(np.array(128, np.uint8), "za"),
                 numpy_helper.from_array(np.array(1.0, np.float32), "sa"),
                 numpy_helper.from_array(np.ones(n, np.float32), "sb")]
        g = helper.make_graph([helper.make_node("MatMulIntegerToFloat", ["A", "B", "sa", "sb", "za"], ["Y"],
                                                domain="com.microsoft")], "probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                                  ir_version=9)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        a = np.full((m, k), 255, np.uint8)
        exact = (a.astype(np.int64) - 128) @ w.astype(np.int64)
        res[name] = float(np.abs(sess.run(None, {"A": a})[0] - exact).max())
    return res


def fidelity(v: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = np.sum(v * ref, axis=1)
    return {"min": float(cos.min()), "median": float(np.median(cos))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--heldout", type=int, default=0, help="also this many texts of the held-out reference")
    ap.add_argument("--cpu", default="Haswell", help="QEMU CPU model (AVX2, no AVX-512/VNNI by default)")
    ap.add_argument("--min", type=float, default=0.995)
    ap.add_argument("--median", type=float, default=0.999)
    # Not 1e-6: AVX2 and AVX-512 float kernels differ in the last bits, and a one-ulp change of an
    # activation can move its int8 code, so native and emulated vectors differ by up to ~1e-3
    # (measured: min cosine 0.99994 with the shipped model; a one-ulp perturbation of the
    # embedding output natively gives 0.99956). Saturating weights give ~0.993.
    ap.add_argument("--agree", type=float, default=0.999, help="min cosine native vs emulated")
    ap.add_argument("--emulated", type=Path, help=argparse.SUPPRESS)   # inner run: write results here
    a = ap.parse_args(argv)
    texts, ref = texts_and_reference(a.heldout)

    if a.emulated:
        np.savez(a.emulated, vectors=embed(a.model, texts), probe=json.dumps(probe()))
        return 0

    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        print("qemu-x86_64 not found (Debian/Ubuntu: apt-get install qemu-user)", file=sys.stderr)
        return 2
    native = embed(a.model, texts)
    native_probe = probe()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "emulated.npz"
        t0 = time.monotonic()
        cmd = [qemu, "-cpu", a.cpu, sys.executable, __file__, "--model", str(a.model),
               "--heldout", str(a.heldout), "--emulated", str(out)]
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        secs = time.monotonic() - t0
        if run.returncode:
            print(run.stdout, "\n".join(l for l in run.stderr.splitlines() if "TCG doesn't support" not in l),
                  file=sys.stderr)
            return 1
        got = np.load(out)
        emulated, emu_probe = got["vectors"], json.loads(str(got["probe"]))
    agree = np.sum(native * emulated, axis=1)
    report = {
        "model": str(a.model), "texts": len(texts), "qemu_cpu": a.cpu, "emulated_seconds": round(secs, 1),
        "probe_native": native_probe, "probe_emulated": emu_probe,
        "native": fidelity(native, ref), "emulated": fidelity(emulated, ref),
        "native_vs_emulated": {"min_cosine": float(agree.min()), "max_abs": float(np.abs(native - emulated).max())},
    }
    print(json.dumps(report, indent=1))
    saturates = emu_probe["127+127 at rows 0,1 (same pair)"] > 1000 and \
        emu_probe["64+64 at rows 0,1 (pair sum 128)"] == 0 and emu_probe["127+127 at rows 1,2 (different pairs)"] == 0
    ok = saturates and report["emulated"]["min"] >= a.min and report["emulated"]["median"] >= a.median \
        and report["native_vs_emulated"]["min_cosine"] >= a.agree
    if not saturates:
        print("the emulated CPU did not saturate the probe as a non-VNNI CPU does: check proves nothing",
              file=sys.stderr)
    print("OK" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
