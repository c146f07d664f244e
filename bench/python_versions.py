"""The same app under two Pythons, or one Python with two sets of packages: the local host
started with each interpreter, in paired, interleaved rounds (the order alternating): one
sentence per request from 8 clients and 32 per request from 2 (as ``make bench``), and
``GET /health`` from 8 (an empty request). Rates, the single-sentence share of the batched rate,
and the server process's CPU per request or sentence (from ``/proc``); each interpreter's
version and numpy's. Linux only; not part of ``make bench`` (its reference comparisons run on
the machine's Python).

Usage: .venv/bin/python bench/python_versions.py 3.11=.venv/bin/python 3.12=.venv-py312/bin/python
       [--rounds N] [--out FILE]"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import workloads  # noqa: E402
from singles_cost import http_loads, process_cpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pythons", nargs=2, help="NAME=INTERPRETER (each with the app installed)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    pythons = dict(p.split("=", 1) for p in args.pythons)
    if len(pythons) != 2:       # one name twice: the second interpreter alone, no comparison
        parser.error(f"two different names: {args.pythons}")
    short = workloads.build(1024, 256, 1000)["short"]
    servers = {}
    own = sys.executable
    try:
        for name, python in pythons.items():
            sys.executable = python         # bench.Server starts the local host with it
            servers[name] = bench.Server()
    finally:
        sys.executable = own
    loads = http_loads(short, 2000)
    rows: dict[str, dict[str, list[dict]]] = {}
    try:
        for s in servers.values():          # load the model, start the workers
            bench.run_clients(s, "/embeddings", [{"input": short[:64]}] * 4, 2)
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                s = servers[name]
                for load, (n, run) in loads.items():
                    c0 = process_cpu(s.proc.pid)
                    dt = run(s)
                    cpu = 1e3 * (process_cpu(s.proc.pid) - c0) / n
                    rows.setdefault(name, {}).setdefault(load, []).append(
                        {"per_s": n / dt, "server_cpu_ms": cpu})
                    print(f"round {r + 1} Python {name}, {load}: {n / dt:.1f}/s, "
                          f"server CPU {cpu:.2f} ms each", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    medians = {name: {load: {k: statistics.median(x[k] for x in v) for k in v[0]}
                      for load, v in by_load.items()} for name, by_load in rows.items()}
    singles, batched = list(loads)[:2]
    for name, m in medians.items():
        m["singles_share_of_batched"] = m[singles]["per_s"] / m[batched]["per_s"]
    out = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "pythons": {name: subprocess.run([python, "-c", "import sys; print(sys.version)"],
                                            capture_output=True, text=True).stdout.strip()
                       for name, python in pythons.items()},
           "numpy": {name: subprocess.run([python, "-c", "import numpy; print(numpy.__version__)"],
                                          capture_output=True, text=True).stdout.strip()
                     for name, python in pythons.items()},
           "rounds": rows, "medians": medians}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
