"""Soak: bursts of mixed text and image traffic through the local host, RSS of the server over time.

    .venv/bin/python bench/soak.py                    # 12 cycles of 40 s bursts + 20 s idle
    .venv/bin/python bench/soak.py --smoke            # 2 short cycles (make bench-smoke)
    .venv/bin/python bench/soak.py --minutes 120      # as long as you like

Each run serves the app twice with the same seeded traffic (loopback only): once with the
process memory tuning off (``EMBEDDINGS_MEMORY_TUNING=off``: glibc and onnxruntime defaults, as
before embedding_core/memory.py) and once as shipped, and reports for each: peak RSS, RSS at the
end of every burst and after every idle period, and the largest RSS after idle. A burst is
``--clients`` threads each sending requests drawn from a fixed mix: 32 short sentences, 16
long documents with ``truncate``, 256 texts at the token limit, 8 small JPEGs, one large RGBA or
16-bit PNG (12 Mpx), a text with a ConSE item, and requests that are refused (an 8 MB string
without spaces, a 36 Mpx WebP). Each connection is a new thread in the local host, as requests
are on the Functions worker's thread pool.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402
from bench import KEY, Server  # noqa: E402

Q = "?api-version=2024-05-01-preview"


def _png(im) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_mix(seed: int) -> list[tuple[str, str, dict, int]]:
    """(name, path, body, weight): the request kinds of a burst."""
    import numpy as np
    from PIL import Image

    w = workloads.build(256, 64, 16)
    rng = random.Random(seed)
    photos = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
    jpegs = []
    for p in photos[:8]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize((320, 240)).save(buf, "JPEG", quality=85)
        jpegs.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    g = np.linspace(0, 255, 4000, dtype=np.float32)
    rgba = np.stack([np.broadcast_to(g[None, :], (3000, 4000))] * 4, axis=-1).astype(np.uint8)
    rgba[..., 3] = 128
    big_rgba = _png(Image.fromarray(rgba))
    big16 = _png(Image.fromarray((np.broadcast_to(g[None, :], (3000, 4000)) * 257).astype(np.uint16)))
    webp = io.BytesIO()
    Image.new("RGB", (6000, 6000), (9, 9, 9)).save(webp, "WEBP", lossless=True, quality=0, method=0)
    webp36 = "data:image/webp;base64," + base64.b64encode(webp.getvalue()).decode()
    docs = [" ".join(rng.choice(w["mixed"]) for _ in range(rng.randint(4, 40))) for _ in range(16)]
    return [
        ("text: 32 short", "/embeddings", {"input": w["short"][:32]}, 30),
        ("text: 16 long docs, truncate", "/embeddings", {"input": docs, "truncate": "END"}, 15),
        ("text: 128 at the token limit", "/embeddings", {"input": w["longest"][:128], "truncate": "END"}, 3),
        ("text: 8 MB without spaces (422)", "/embeddings", {"input": ["a" * 8_000_000]}, 2),
        ("images: 8 small JPEGs", "/images/embeddings", {"input": [{"image": u} for u in jpegs]}, 20),
        ("images: JPEG + text (ConSE)", "/images/embeddings",
         {"input": [{"image": jpegs[0], "text": docs[0][:500]}], "truncate": "END"}, 10),
        ("image: 12 Mpx RGBA PNG", "/images/embeddings", {"input": [{"image": big_rgba}]}, 6),
        ("image: 12 Mpx 16-bit PNG", "/images/embeddings", {"input": [{"image": big16}]}, 4),
        ("image: 36 Mpx WebP (422)", "/images/embeddings", {"input": [{"image": webp36}]}, 2),
    ]


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` (MiB); an error once it has exited (an exited child not yet waited for
    still has a status file, without VmRSS: that was a NaN, which max() then skipped)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has exited: no RSS to read")


def rss_breakdown(pid: int) -> dict:
    """RSS by kind of mapping (MiB): glibc's main heap, its other arenas (anonymous heaps
    reserved 64 MiB-aligned, counted), other anonymous memory (mmapped blocks, Python's and
    onnxruntime's own allocations, model weights) and files."""
    regions, cur = [], None
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start = int(head[0].split("-")[0], 16)
                cur = {"start": start, "perm": head[1], "name": " ".join(head[5:]), "rss": 0}
                regions.append(cur)
            elif head[0] == "Rss:" and cur is not None:
                cur["rss"] = int(head[1])
    out = {"main_heap_mb": 0.0, "arenas": 0, "arena_heaps_mb": 0.0, "anon_other_mb": 0.0,
           "files_mb": 0.0}
    arena_bases = {r["start"] for r in regions
                   if not r["name"] and r["start"] % (64 << 20) == 0 and r["perm"] == "rw-p"}
    for r in regions:
        base = r["start"] - r["start"] % (64 << 20)
        if r["name"] == "[heap]":
            out["main_heap_mb"] += r["rss"] / 1024
        elif not r["name"] and base in arena_bases:
            out["arena_heaps_mb"] += r["rss"] / 1024
        elif not r["name"] or r["name"].startswith("["):
            out["anon_other_mb"] += r["rss"] / 1024
        else:
            out["files_mb"] += r["rss"] / 1024
    out["arenas"] = len(arena_bases)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def soak(env: dict[str, str], mix, cycles: int, burst_s: float, idle_s: float, clients: int,
         seed: int, label: str) -> dict:
    server = Server({"EMBEDDINGS_MAX_QUEUE": "64", "EMBEDDINGS_QUEUE_TIMEOUT_SECONDS": "120", **env})
    pid = server.proc.pid
    bodies = [(name, path, json.dumps(body).encode()) for name, path, body, _ in mix]
    weights = [wt for *_, wt in mix]
    samples: list[tuple[float, float]] = []
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    by_body: dict[str, dict[int, int]] = {}
    lock = threading.Lock()
    stop_sampling = threading.Event()
    t_start = time.perf_counter()

    def sampler() -> None:
        while not stop_sampling.is_set():
            try:
                samples.append((time.perf_counter() - t_start, rss_mb(pid)))
            except (OSError, RuntimeError):  # the server is gone: the main thread says so
                return
            stop_sampling.wait(0.25)

    def client(deadline: float, rng: random.Random) -> None:
        while time.perf_counter() < deadline:
            name, path, raw = rng.choices(bodies, weights)[0]
            conn = server.conn()              # a new connection: a new server thread
            try:
                conn.request("POST", path + Q, body=raw, headers={
                    "api-key": KEY, "Content-Type": "application/json",
                    "extra-parameters": "pass-through"})
                res = conn.getresponse()
                res.read()
                status = res.status
            except (OSError, http.client.HTTPException):
                # 0: no whole answer (refused, reset, cut short: IncompleteRead, BadStatusLine,
                # which are no OSError and ended the client's thread, its requests uncounted).
                status = 0
            finally:
                conn.close()
            with lock:
                counts[name] = counts.get(name, 0) + 1
                statuses[status] = statuses.get(status, 0) + 1
                mine = by_body.setdefault(name, {})
                mine[status] = mine.get(status, 0) + 1

    threading.Thread(target=sampler, daemon=True).start()
    after_burst, after_idle = [], []
    try:
        conn = server.conn()                  # load both deployments before measuring
        server.post(conn, "/embeddings", {"input": ["warm up"]})
        server.post(conn, "/images/embeddings", {"input": [{"image": mix[4][2]["input"][0]["image"]}]})
        conn.close()
        loaded = rss_mb(pid)
        rng = random.Random(seed)
        for c in range(cycles):
            deadline = time.perf_counter() + burst_s
            threads = [threading.Thread(target=client, args=(deadline, random.Random(rng.random())))
                       for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after_burst.append(rss_mb(pid))
            time.sleep(idle_s)
            after_idle.append(rss_mb(pid))
            print(f"[soak {label}] cycle {c + 1}/{cycles}: after burst {after_burst[-1]:.0f} MiB, "
                  f"after idle {after_idle[-1]:.0f} MiB", file=sys.stderr, flush=True)
        breakdown = rss_breakdown(pid)
        # The server must have lived through the run: one that exited in the last idle period
        # answered every request, and its breakdown (an exited process's smaps are empty) would
        # read as zeros.
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited during the soak (code {server.proc.returncode})")
        peak = server.peak_rss_mb()
    finally:
        stop_sampling.set()
        server.stop()
    return {"label": label, "env": env, "loaded_mb": loaded, "peak_mb": peak,
            "after_burst_mb": after_burst, "after_idle_mb": after_idle,
            "max_after_idle_mb": max(after_idle), "last_after_idle_mb": after_idle[-1],
            "after_idle_breakdown": breakdown,
            "requests": counts, "statuses": statuses, "statuses_by_body": by_body,
            "series": [(round(t, 2), round(r, 1)) for t, r in samples]}


def report(runs: list[dict], args) -> str:
    lines = [f"Soak: {args.cycles} cycles of {args.burst:g} s bursts ({args.clients} clients, new "
             f"connection per request) + {args.idle:g} s idle, seed {args.seed}.", "",
             "| memory tuning | loaded | peak RSS | after burst (first / max) | after idle (first / max / last) | requests | statuses |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        ab, ai = r["after_burst_mb"], r["after_idle_mb"]
        lines.append(f"| {r['label']} | {r['loaded_mb']:.0f} MiB | {r['peak_mb']:.0f} MiB | "
                     f"{ab[0]:.0f} / {max(ab):.0f} MiB | {ai[0]:.0f} / {max(ai):.0f} / {ai[-1]:.0f} MiB | "
                     f"{sum(r['requests'].values())} | "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())) + " |")
    lines += ["", "RSS after the last idle period, by kind of mapping (glibc arenas are the anonymous "
              "heaps glibc reserves 64 MiB-aligned for threads):", "",
              "| memory tuning | main heap | other arenas (64 MiB heaps) | other anonymous | files |",
              "|---|---|---|---|---|"]
    for r in runs:
        b = r["after_idle_breakdown"]
        lines.append(f"| {r['label']} | {b['main_heap_mb']:.0f} MiB | {b['arena_heaps_mb']:.0f} MiB "
                     f"({b['arenas']}) | {b['anon_other_mb']:.0f} MiB | {b['files_mb']:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("--minutes", type=float, help="cycles to fill this many minutes per run")
    ap.add_argument("--burst", type=float, default=40.0)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("off", "on"))
    ap.add_argument("--on-first", action="store_true", help="run with the tuning on first")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra environment variable for the server (both runs)")
    run_dir = ROOT / "bench" / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ap.add_argument("--out", default=str(run_dir / "soak.json"),
                        help="default: a new directory under bench/runs/ (git-ignored)")
    args = ap.parse_args()
    if args.smoke:
        args.cycles, args.burst, args.idle, args.clients = 2, 6.0, 4.0, 4
    if args.minutes:
        args.cycles = max(1, round(args.minutes * 60 / (args.burst + args.idle)))
    mix = build_mix(args.seed)
    runs = []
    extra = dict(e.split("=", 1) for e in args.env)
    configs = [("off", {"EMBEDDINGS_MEMORY_TUNING": "off"}), ("on (default)", {})]
    for label, env in (configs[::-1] if args.on_first else configs):
        if args.only and not label.startswith(args.only):
            continue
        runs.append(soak({**env, **extra}, mix, args.cycles, args.burst, args.idle, args.clients, args.seed,
                         label))
    text = report(runs, args)
    print(text)
    # The mix expects 200, and 422 for its two refused bodies only; a burst may also meet a full
    # queue (429). Anything else (401: a wrong key, 5xx, 0: a dropped connection, a 422 for a
    # body that should be served, such as a request wrongly judged too slow for the instance)
    # means the soak did not measure what it says.
    bad = [(r["label"], name, status, n) for r in runs
           for name, got in r["statuses_by_body"].items() for status, n in got.items()
           if status not in ((422, 429) if name.endswith("(422)") else (200, 429))]
    failure = None
    if bad or not all(r["statuses"].get(200, 0) > sum(r["statuses"].values()) / 2 for r in runs):
        failure = f"soak: unexpected statuses {bad or [r['statuses'] for r in runs]}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # A failed run's file says so at the top (its figures kept, to see what went wrong).
    Path(args.out).write_text(json.dumps({**({"failed": failure} if failure else {}),
                                          "args": vars(args), "runs": runs,
                                          "table_markdown": text}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if failure:
        sys.exit(failure)


if __name__ == "__main__":
    main()
