"""The bench's fairness and largest-request measurements on one core, the CPU of a 2048 MB Flex
Consumption instance: this process (the client) and the local host it starts are pinned to the
first CPU it may use. Linux only. Usage: .venv/bin/python bench/one_core.py [--out FILE]

Not part of ``make bench`` (the largest request alone takes over a minute on one core); the
bench's throughput rounds measure the one-core rate themselves."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
import workloads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "one-core.json"))
    args = parser.parse_args()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})      # before any thread or server starts: all inherit it
    w = workloads.build(1024, 256, 1000)
    w["largest"] = w["longest"]
    out = {"machine": bench.machine(), "cpu": cpu,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "fairness": [bench.fairness(w, 256, 40) for _ in range(2)],
           "largest": bench.largest_request(w)}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
