"""The bench's fairness and largest-request measurements on one core, the CPU of a 2048 MB Flex
Consumption instance: this process (the client) and the local host it starts are pinned to the
first CPU it may use. First, on a machine with a second CPU, single-sentence requests from 8
connections against requests of 32 from 2 (the bench's singles target, as a ratio) with the
server on the first CPU and its clients on the same one (as ``make bench`` prices one core: the
clients stand in for the Functions host's share) or on the second (clients elsewhere, as on
Azure), in interleaved rounds; then the same loads in-process, 8 and 2 threads calling
``function_app`` on the first CPU (no HTTP: what the local host's HTTP costs), and, in a child
process, on every CPU this one may use (the ratio's ceiling on the whole machine without HTTP:
what ``make bench`` measures, less its HTTP). Linux only.
Usage: .venv/bin/python bench/one_core.py [--out FILE] [--singles-rounds N]

Not part of ``make bench`` (the largest request alone takes over a minute on one core); the
bench's throughput rounds measure the one-core rate themselves."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
import workloads  # noqa: E402


def singles(w: dict, cpu: int, other: int, rounds: int) -> dict:
    """Per round and client placement: single-sentence requests/s (8 connections), sentences/s
    in requests of 32 (2 connections), and their ratio; the server pinned to ``cpu``."""
    short = w["short"]
    ones = [{"input": [t]} for t in short]
    batched = [{"input": c, "truncate": "END"} for c in bench.chunks(short, 32)]
    server = bench.Server(cpus={cpu})
    rows: dict[str, list[dict]] = {}
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": short[:64]})     # load the model
        conn.close()
        for _ in range(rounds):
            for name, cpus in (("clients on the same core", {cpu}),
                               ("clients on another core", {other})):
                single = len(short) / bench.run_clients(server, "/embeddings", ones, 8, cpus=cpus)
                batch = len(short) / bench.run_clients(server, "/embeddings", batched, 2, cpus=cpus)
                rows.setdefault(name, []).append(
                    {"singles_per_s": single, "batched_per_s": batch, "ratio": single / batch})
                print(f"{name}: {single:.0f} single, {batch:.0f} batched /s, "
                      f"{100 * single / batch:.0f} %", flush=True)
    finally:
        server.stop()
    return {name: {"rounds": v, "median_ratio": statistics.median(r["ratio"] for r in v)}
            for name, v in rows.items()}


def in_process_clients() -> Callable[[list, int], float]:
    """``run(bodies, clients)``: ``bench.run_clients`` with each body sent as a
    ``func.HttpRequest`` to ``function_app.embeddings`` in this process (its threads, and the
    inference workers they start, on this process's CPUs): no HTTP. Seconds taken."""
    for name in [k for k in os.environ if k.startswith(bench.CALLER_SETTINGS)]:
        del os.environ[name]     # the settings the local host has (bench.Server), not the caller's
    os.environ["EMBEDDINGS_API_KEYS"] = bench.KEY
    import azure.functions as func

    import function_app

    class InProcess:          # what bench.run_clients needs of a server: no CPUs, no connection
        cpus = None

        def conn(self):
            return types.SimpleNamespace(close=lambda: None)

    def send(_conn, body: dict) -> None:
        res = function_app.embeddings(func.HttpRequest(
            "POST", "http://127.0.0.1:7071/embeddings" + bench.Q,
            params={"api-version": bench.Q.split("=", 1)[1]}, body=json.dumps(body).encode(),
            headers={"api-key": bench.KEY, "content-type": "application/json",
                     "extra-parameters": "pass-through"}))
        if res.status_code != 200:
            raise RuntimeError(f"{res.status_code}: {res.get_body()[:300]!r}")

    def run(bodies: list, clients: int) -> float:
        return bench.run_clients(InProcess(), "/embeddings", bodies, clients, send=send)
    return run


def in_process_singles(w: dict, rounds: int) -> dict:
    """The singles loads through ``function_app`` in this process (its threads, and the
    inference workers they start, on the CPU this thread is pinned to): no HTTP."""
    run = in_process_clients()

    short = w["short"]
    run([{"input": short[:64]}], 1)                     # load the model
    rows = []
    for _ in range(rounds):
        single = len(short) / run([{"input": [t]} for t in short], 8)
        batch = len(short) / run([{"input": c, "truncate": "END"}
                                  for c in bench.chunks(short, 32)], 2)
        rows.append({"singles_per_s": single, "batched_per_s": batch, "ratio": single / batch})
        print(f"in-process: {single:.0f} single, {batch:.0f} batched /s, "
              f"{100 * single / batch:.0f} %", flush=True)
    return {"rounds": rows, "median_ratio": statistics.median(r["ratio"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    run_dir = ROOT / "bench" / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    parser.add_argument("--out", default=str(run_dir / "one-core.json"),
                        help="default: a new directory under bench/runs/ (git-ignored)")
    parser.add_argument("--singles-rounds", type=int, default=4)
    parser.add_argument("--in-process-only", action="store_true",
                        help="only the in-process singles, on the CPUs given; JSON on the last line")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[0]
    w = workloads.build(1024, 256, 1000)
    w["largest"] = w["longest"]
    if args.in_process_only:
        print(json.dumps(in_process_singles(w, args.singles_rounds)))
        return
    out = {"machine": bench.machine(), "cpu": cpu,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if len(allowed) > 1 and args.singles_rounds > 0:
        out["singles"] = singles(w, cpu, allowed[1], args.singles_rounds)
        # Its own process: the service sizes its workers to the CPUs at its first request.
        child = subprocess.run([sys.executable, __file__, "--in-process-only", "--singles-rounds",
                                str(args.singles_rounds)], stdout=subprocess.PIPE, text=True,
                               check=True)
        out["singles"][f"in-process on all {len(allowed)} CPUs, no HTTP"] = \
            json.loads(child.stdout.splitlines()[-1])
    os.sched_setaffinity(0, {cpu})      # before the next server starts: all its threads inherit it
    if args.singles_rounds > 0:
        out["singles"] = {**out.get("singles", {}),
                          "in-process, no HTTP": in_process_singles(w, args.singles_rounds)}
    out["fairness"] = [bench.fairness(w, 256, 40) for _ in range(2)]
    out["largest"] = bench.largest_request(w)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
