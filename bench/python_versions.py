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


def version(name: str, python: str, module: str) -> str:
    """``module``'s version (Python's own for "python") in the environment of ``python``; the
    run fails naming the environment and what it could not read (that was an empty string in
    the run's JSON)."""
    code = ("import sys; print(sys.version)" if module == "python"
            else f"import {module}; print({module}.__version__)")
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"python_versions: {name} ({python}): could not read its {module} version: {exc}")
    out = res.stdout.strip()
    if res.returncode or not out:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:]) or "no output"
        sys.exit(f"python_versions: {name} ({python}): could not read its {module} version "
                 f"(exit status {res.returncode}): {tail}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pythons", nargs=2, help="NAME=INTERPRETER (each with the app installed)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    pythons = dict(p.split("=", 1) for p in args.pythons)
    if len(pythons) != 2:       # one name twice: the second interpreter alone, no comparison
        parser.error(f"two different names: {args.pythons}")
    # Read before the run, not after it: an environment that cannot say them fails at once.
    versions = {what: {name: version(name, python, module) for name, python in pythons.items()}
                for what, module in (("pythons", "python"), ("numpy", "numpy"))}
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
           **versions, "rounds": rows, "medians": medians}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
