"""Where a one-sentence request's cost goes: the server's and the client's CPU per request for
one-sentence requests from 8 connections, requests of 32 sentences from 2 (as ``make bench``
sends them) and ``GET /health`` from 8 (an empty request: the HTTP floor), in interleaved rounds
through the local host. The server's CPU is its process's from ``/proc``; the client's is this
whole process's (its threads only send and read; the main thread waits). Linux only; not part of ``make bench``.

``--in-process``: the same two text loads sent to ``function_app`` in this process instead (no
HTTP, every CPU), and their CPU per sentence split by thread: the inference workers (and, of
that, ONNX Runtime's runs, timed in thread CPU), the rest of the process (the request threads).
Usage: .venv/bin/python bench/singles_cost.py [--rounds N] [--out FILE] [--in-process]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
import workloads  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
WORKER_THREADS = "inference-worker"    # the name of embedding_core.inference_queue's threads


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK     # utime + stime


def health(server: bench.Server, n: int, clients: int) -> float:
    def get(conn, _) -> None:
        conn.request("GET", "/health")
        res = conn.getresponse()
        res.read()
        if res.status != 200:
            raise RuntimeError(f"/health: {res.status}")
    return bench.run_clients(server, "/health", [None] * n, clients, send=get)


def http_loads(short: list[str], health_requests: int) -> dict:
    """The three loads through HTTP: name -> (requests or sentences, run(server) -> seconds)."""
    return {
        "8 clients, one sentence per request":
            (len(short), lambda s: bench.run_clients(s, "/embeddings",
                                                     [{"input": [t]} for t in short], 8)),
        # the batched set three times over: 17 requests alone last under a second
        "2 clients, 32 sentences per request":
            (3 * len(short), lambda s: bench.run_clients(
                s, "/embeddings", [{"input": c, "truncate": "END"}
                                   for c in bench.chunks(short, 32)] * 3, 2)),
        "8 clients, GET /health":
            (health_requests, lambda s: health(s, health_requests, 8)),
    }


def thread_cpu(pid: int, tid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:      # the thread has ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def in_process(short: list[str], rounds: int) -> dict:
    """CPU per sentence of the two text loads in-process, by thread (see the module doc)."""
    import threading

    import onnxruntime as ort

    import one_core

    run_clients = one_core.in_process_clients()
    in_runs = {"cpu": 0.0, "runs": 0}
    lock = threading.Lock()
    plain_run = ort.InferenceSession.run

    def timed_run(self, *args, **kwargs):      # every session's run, on whichever thread
        t0 = time.thread_time()
        try:
            return plain_run(self, *args, **kwargs)
        finally:
            with lock:
                in_runs["cpu"] += time.thread_time() - t0
                in_runs["runs"] += 1
    ort.InferenceSession.run = timed_run
    loads = {
        "8 clients, one sentence per request": (len(short), [{"input": [t]} for t in short], 8),
        "2 clients, 32 sentences per request":
            (3 * len(short), [{"input": c, "truncate": "END"}
                              for c in bench.chunks(short, 32)] * 3, 2),
    }
    pid = os.getpid()
    run_clients([{"input": short[:64]}], 1)       # load the model, start the workers
    workers = [t.native_id for t in threading.enumerate()
               if t.name.startswith(WORKER_THREADS)]
    if not workers:         # workers_ms would read 0, and their CPU count as the rest
        ort.InferenceSession.run = plain_run
        raise RuntimeError(f"no thread named {WORKER_THREADS}* after the first request: the "
                           "inference workers' CPU cannot be told from the rest")
    rows: dict[str, list[dict]] = {}
    for r in range(rounds):
        for name, (n, bodies, clients) in loads.items():
            in_runs.update(cpu=0.0, runs=0)
            p0, w0 = process_cpu(pid), sum(thread_cpu(pid, t) for t in workers)
            dt = run_clients(bodies, clients)
            process = 1e3 * (process_cpu(pid) - p0) / n
            worker = 1e3 * (sum(thread_cpu(pid, t) for t in workers) - w0) / n
            row = {"per_s": n / dt, "process_ms": process, "workers_ms": worker,
                   "onnxruntime_runs_ms": 1e3 * in_runs["cpu"] / n,
                   "rest_ms": process - worker, "sentences_per_run": n / max(1, in_runs["runs"])}
            rows.setdefault(name, []).append(row)
            print(f"round {r + 1} {name}: {row['per_s']:.1f}/s, CPU per sentence: process "
                  f"{process:.2f} ms, workers {worker:.2f} (ONNX Runtime runs "
                  f"{row['onnxruntime_runs_ms']:.2f}, {row['sentences_per_run']:.1f} sentences "
                  f"a run), request threads and the rest {row['rest_ms']:.2f}", flush=True)
    ort.InferenceSession.run = plain_run
    return {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "in_process": True, "workers": len(workers), "rounds": rows,
            "medians": {name: {k: statistics.median(r[k] for r in v) for k in v[0]}
                        for name, v in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    short = workloads.build(1024, 256, 1000)["short"]
    if args.in_process:
        out = in_process(short, args.rounds)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return
    loads = http_loads(short, 3000)
    server = bench.Server()
    rows: dict[str, list[dict]] = {}
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": short[:64]})     # load the model
        conn.close()
        for r in range(args.rounds):
            for name, (n, run) in loads.items():
                c0, s0, st0 = time.process_time(), process_cpu(server.proc.pid), bench.steal_ticks()
                dt = run(server)
                row = {"per_s": n / dt,
                       "server_ms": 1e3 * (process_cpu(server.proc.pid) - s0) / n,
                       "client_ms": 1e3 * (time.process_time() - c0) / n,
                       "steal_ticks": (bench.steal_ticks() or 0) - (st0 or 0)}
                rows.setdefault(name, []).append(row)
                print(f"round {r + 1} {name}: {row['per_s']:.1f}/s, server {row['server_ms']:.2f} ms,"
                      f" client {row['client_ms']:.2f} ms, steal {row['steal_ticks']}", flush=True)
    finally:
        server.stop()
    out = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "rounds": rows,
           "medians": {name: {k: statistics.median(r[k] for r in v)
                              for k in ("per_s", "server_ms", "client_ms")}
                       for name, v in rows.items()}}
    for name, m in out["medians"].items():
        print(f"{name}: {m['per_s']:.1f}/s, server {m['server_ms']:.2f} ms, "
              f"client {m['client_ms']:.2f} ms of CPU per sentence (per request for /health; "
              "medians)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
