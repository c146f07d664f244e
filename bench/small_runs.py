"""What the text model costs per sentence by the size of the batch it runs in: the default
deployment's int8 model on one ONNX Runtime thread (as each inference worker runs it), the
bench's short sentences in batches of 1, 2, 4, 8 and 32 in their order, each batch cut into runs
by the app's own ``length_groups``; thread CPU time per sentence, with and without ONNX Runtime's
memory patterns. Measures why one-sentence requests cost more (docs/benchmarks.md); not part of
``make bench``. Usage: .venv/bin/python bench/small_runs.py [--repeats N] [--out FILE]"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
import workloads  # noqa: E402
from embedding_core.text import length_groups  # noqa: E402

MODEL = ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "model.onnx"
TOKENIZER = MODEL.with_name("tokenizer.json")


def session(mem_pattern: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_mem_pattern = mem_pattern
    return ort.InferenceSession(str(MODEL), sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess, rows: list[list[int]]) -> None:
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, x in enumerate(rows):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                      "token_type_ids": np.zeros_like(ids)})


def runs(ids: list[list[int]], batch: int) -> list[list[list[int]]]:
    out = []
    for i in range(0, len(ids), batch):
        b = sorted(ids[i:i + batch], key=len)
        out += [b[lo:hi] for lo, hi in length_groups([len(x) for x in b])]
    return out


def main() -> None:
    from tokenizers import Tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.no_truncation()
    ids = [e.ids[:256] for e in tok.encode_batch(workloads.build(1024, 256, 1000)["short"])]
    plans = {b: runs(ids, b) for b in (1, 2, 4, 8, 32)}
    sessions = {"memory patterns on (shipped)": session(True), "memory patterns off": session(False)}
    for s in sessions.values():
        for plan in plans.values():       # warm: every shape once
            for r in plan:
                run(s, r)
    ms: dict[str, dict[int, list[float]]] = {k: {b: [] for b in plans} for k in sessions}
    for _ in range(args.repeats):
        for name, s in sessions.items():
            for b, plan in plans.items():
                c0 = time.thread_time()
                for r in plan:
                    run(s, r)
                ms[name][b].append(1e3 * (time.thread_time() - c0) / len(ids))
    out = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "sentences": len(ids), "mean_tokens": sum(map(len, ids)) / len(ids),
           "runs_per_batch_size": {b: len(p) for b, p in plans.items()}, "ms_per_sentence": ms}
    print(f"{len(ids)} sentences, {out['mean_tokens']:.1f} tokens on average")
    for name, by in ms.items():
        print(name + ": " + ", ".join(f"batches of {b} {statistics.median(v):.2f} ms"
                                      for b, v in by.items()) + " per sentence (medians)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
