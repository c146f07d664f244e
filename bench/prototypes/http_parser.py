"""What the local host's HTTP layer costs the singles target: the shipped local host (uvicorn on
h11, with its own time-outs and JSON errors) against the same app behind uvicorn's httptools
parser on uvloop, in interleaved rounds on the same machine.

A measurement for a design decision (docs/inference-queue.md, "Many one-sentence requests at
once"), not part of the service or of `make bench`. The second host is the shipped one with two
uvicorn options changed (``http="httptools"``, ``loop="uvloop"``): its head time-out, 431 and JSON
400s are h11-specific and absent there, so it is not a server to run, only a price to read.
Neither package is among the app's requirements; install them somewhere first, e.g.

    .venv/bin/pip install --target /tmp/fast httptools==0.9.0 uvloop==0.23.0
    .venv/bin/python bench/prototypes/http_parser.py --extra /tmp/fast [--rounds N] [--out FILE]

Two placements, each with both hosts, rounds interleaved: the server on the first CPU and the
8 (singles) or 2 (requests of 32) client threads on the second (one core with its callers
elsewhere, as on a 2048 MB Flex instance), and the server and clients on every CPU (as
``make bench`` runs). Linux, 2+ CPUs."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def serve_fast() -> None:
    """tools/local_host.py's main() with uvicorn's httptools parser and uvloop."""
    import uvicorn

    import tools.local_host as local_host

    plain = uvicorn.Config

    def config(*args, **kwargs):
        kwargs.update(http="httptools", loop="uvloop")
        kwargs.pop("h11_max_incomplete_event_size", None)
        return plain(*args, **kwargs)
    uvicorn.Config = config
    local_host.main(sys.argv[2:])


class Host:
    """A local host started with ``cmd``, every thread on ``cpus`` (as bench.Server)."""

    def __init__(self, cmd: list[str], cpus: set[int], extra: str | None):
        import bench

        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
        env.update({"EMBEDDINGS_API_KEYS": bench.KEY, "LOG_LEVEL": "WARNING"})
        if extra:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH")]))
        self.server = bench.Server.__new__(bench.Server)
        self.server.cpus = cpus
        self.server.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
        line = self.server.proc.stdout.readline()
        if not line.startswith("Serving"):
            raise SystemExit(f"{cmd[1:3]} did not start: {line.strip()}")
        threading.Thread(target=lambda: [None for _ in self.server.proc.stdout],
                         daemon=True).start()
        u = urlsplit(line.strip().rsplit(" ", 1)[-1])
        self.server.host, self.server.port = u.hostname, u.port
        for tid in os.listdir(f"/proc/{self.server.proc.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def main() -> None:
    if sys.argv[1:2] == ["--serve-fast"]:
        serve_fast()
        return
    import bench
    import workloads

    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", help="a directory with httptools and uvloop (PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs")
    short = workloads.build(1024, 256, 1000)["short"]
    ones = [{"input": [t]} for t in short]
    batched = [{"input": c, "truncate": "END"} for c in bench.chunks(short, 32)]
    commands = {"h11 (shipped)": [sys.executable, "-m", "tools.local_host", "--port", "0"],
                "httptools + uvloop": [sys.executable, __file__, "--serve-fast", "--port", "0"]}
    placements = {"one core, clients on another": ({cpus[0]}, {cpus[1]}),
                  "every core, clients on them too": (set(cpus), set(cpus))}
    out = {"machine": bench.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "placements": {}}
    for place, (server_cpus, client_cpus) in placements.items():
        hosts = {name: Host(cmd, server_cpus, args.extra) for name, cmd in commands.items()}
        rows: dict[str, list[dict]] = {name: [] for name in hosts}
        try:
            for h in hosts.values():
                conn = h.server.conn()
                h.server.post(conn, "/embeddings", {"input": short[:64]})    # load the model
                conn.close()
            for r in range(args.rounds):
                for name, h in hosts.items():
                    steal = bench.steal_ticks()
                    single = len(short) / bench.run_clients(h.server, "/embeddings", ones, 8,
                                                            cpus=client_cpus)
                    batch = len(short) / bench.run_clients(h.server, "/embeddings", batched, 2,
                                                           cpus=client_cpus)
                    rows[name].append({"singles_per_s": single, "batched_per_s": batch,
                                       "ratio": single / batch,
                                       "steal_ticks": (bench.steal_ticks() or 0) - (steal or 0)})
                    print(f"{place}, round {r + 1}, {name}: {single:.0f} single, {batch:.0f} "
                          f"batched /s, {100 * single / batch:.1f} %", flush=True)
        finally:
            for h in hosts.values():
                h.server.stop()
        out["placements"][place] = {
            name: {"rounds": v, "medians": {k: statistics.median(r[k] for r in v)
                                            for k in ("singles_per_s", "batched_per_s", "ratio")}}
            for name, v in rows.items()}
    for place, hosts in out["placements"].items():
        for name, v in hosts.items():
            m = v["medians"]
            print(f"{place}, {name}: {m['singles_per_s']:.0f} single, {m['batched_per_s']:.0f} "
                  f"batched /s, {100 * m['ratio']:.1f} % (medians)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
