"""What telemetry costs: throughput with telemetry on vs off, and the cold start.

    .venv/bin/python bench/telemetry_overhead.py            # ~10 minutes, writes bench/runs/<time>/telemetry.json
    .venv/bin/python bench/telemetry_overhead.py --smoke    # seconds (CI), no cold start

Throughput: the service in-process (``EmbeddingService.embeddings``, real models, one client:
single-sentence requests to the default deployment, the worst case for a per-request cost, and requests of 32 sentences),
telemetry off (``EMBEDDINGS_TELEMETRY=off``) against telemetry on with the real SDK pipeline:
every span sampled and batched (BatchSpanProcessor), metrics aggregated and collected every
second (PeriodicExportingMetricReader), exporters that discard. Short blocks of requests run off
and on back to back, alternating which goes first; the figure is the geometric mean of the
per-pair throughput ratios with its 95 % interval (this shared VM's speed drifts by ±20 % from
minute to minute, so only the two blocks of a pair are compared), and the same for requests per
CPU-second of the process (less disturbed by other jobs on the machine). Also the cost of one
``telemetry.record`` call measured directly, as a share of the mean request time: the precise
figure when the VM is too noisy for the end-to-end ratio to resolve 1 %.

Cold start (fresh processes): ``import function_app`` and the first embedding, with telemetry
off, with ``console`` (exporters set up on a background thread after the first request), and
with an SDK the process already has (the Azure Monitor distro configured before the import, as
the Functions worker does; its own configuration time is reported separately), all exporting
to loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEY = "bench-key-00000000"


def build_sdk():
    """The real SDK pipeline with exporters that discard."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (BatchLogRecordProcessor, LogRecordExporter,
                                                LogRecordExportResult)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (MetricExporter, MetricExportResult,
                                                  PeriodicExportingMetricReader)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SpanExporter,
                                                SpanExportResult)

    class Spans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    class Metrics(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    class Logs(LogRecordExporter):
        def export(self, batch):
            return LogRecordExportResult.SUCCESS

        def force_flush(self, timeout_millis=30_000):
            return True

        def shutdown(self):
            pass

    tp = TracerProvider()                       # default sampler: every span recorded
    tp.add_span_processor(BatchSpanProcessor(Spans()))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(Metrics(), 1000)])
    lp = LoggerProvider()
    lp.add_log_record_processor(BatchLogRecordProcessor(Logs()))
    return tp, mp, lp


# Student's t, two-sided 95 % (the 97.5 % quantile), for 1-30 degrees of freedom.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df: int) -> float:
    """The 95 % interval's multiplier of the standard error for ``df`` degrees of freedom: the
    table, then the Cornish-Fisher expansion (within 0.001 from 30 on; 1.96 is the limit)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def throughput(pairs: int, singles: int, batches: int) -> dict:
    import math

    from embedding_core import service as service_module
    from embedding_core import telemetry
    from embedding_core.registry import Registry
    from embedding_core.service import ApiRequest, EmbeddingService
    from embedding_core.settings import Settings

    import workloads

    sentences = workloads.build(max(singles, 32 * batches), 0, 0)["short"]
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": KEY}),
                           Registry.from_settings(Settings.from_env({})))
    query = {"api-version": "2024-05-01-preview"}
    headers = {"api-key": KEY, "content-type": "application/json"}
    single_bodies = [json.dumps({"input": [s]}).encode() for s in sentences[:singles]]
    batch_bodies = [json.dumps({"input": sentences[i * 32:(i + 1) * 32]}).encode()
                    for i in range(batches)]

    # The request thread's telemetry.record() calls, timed where they happen.
    record, submit_s = telemetry.record, []

    def timed_record(*args, **kwargs):
        t0 = time.perf_counter()
        record(*args, **kwargs)
        if telemetry._recorder is not telemetry._OFF:
            submit_s.append(time.perf_counter() - t0)
    service_module.telemetry = type(sys)("timed_telemetry")
    service_module.telemetry.record = timed_record
    service_module.telemetry.watch_queue = telemetry.watch_queue
    service_module.telemetry.attach_invocation = telemetry.attach_invocation
    service_module.telemetry.detach = telemetry.detach

    sdk = build_sdk()
    # A telemetry worker of the run's own whose thread never records (only flush() does: its
    # time is measured); the process's worker, whose thread would sleep as long, is put back after.
    process_worker = telemetry._worker
    telemetry._worker = type(process_worker)()
    telemetry._worker.BATCH_DELAY_S = 3600
    try:   # the module's telemetry is restored whatever happens (a refused request fails the run)
        telemetry.install(*sdk)
        recorders = {True: telemetry._recorder, False: telemetry._OFF}   # switched per block

        def set_mode(on: bool) -> None:
            telemetry._recorder = recorders[on]

        def run(bodies: list[bytes], on: bool) -> tuple[float, float, float]:
            """Wall and process-CPU seconds of the block, the telemetry thread's share included;
            and the CPU seconds this thread spent recording the block's requests (a batch, as the
            telemetry thread does; thread CPU, so other threads taking the GIL do not count)."""
            set_mode(on)
            t0, c0 = time.perf_counter(), time.process_time()
            for body in bodies:
                res = svc.embeddings(ApiRequest("POST", "/embeddings", headers, query, body))
                if res.status != 200:       # a refusal is not a request served and timed
                    raise RuntimeError(f"{res.status}: {res.body[:200]!r}")
            d0 = time.thread_time()
            telemetry.flush()
            recording = time.thread_time() - d0
            return time.perf_counter() - t0, time.process_time() - c0, recording

        for on in (False, True):                    # warm-up: models, caches, SDK instruments
            run(single_bodies[:20], on)
            run(batch_bodies[:1], on)
        out = {}
        # Short blocks, off and on back to back (alternating which goes first): the VM's speed
        # drifts, so only the two blocks of a pair are compared.
        for name, bodies, units in (("single", single_bodies, 1), ("batch32", batch_bodies, 32)):
            logs: dict[str, list[float]] = {"wall": [], "cpu": []}
            seconds, recording = {False: 0.0, True: 0.0}, 0.0
            submit_s.clear()
            for r in range(pairs):
                dt = {}
                for on in ((False, True) if r % 2 == 0 else (True, False)):
                    dt[on] = run(bodies, on)
                    seconds[on] += dt[on][0]
                recording += dt[True][2]
                logs["wall"].append(math.log(dt[False][0] / dt[True][0]))   # log(throughput on/off)
                logs["cpu"].append(math.log(dt[False][1] / dt[True][1]))    # log(CPU off/on)

            def ratio(values: list[float]) -> tuple[float, list[float]]:
                mean = statistics.fmean(values)
                half = t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
                return math.exp(mean), [math.exp(mean - half), math.exp(mean + half)]

            requests = len(bodies) * pairs
            n = requests * units
            wall, wall_ci = ratio(logs["wall"])
            cpu, cpu_ci = ratio(logs["cpu"])
            request_thread_us = 1e6 * statistics.median(submit_s)
            batch_us = 1e6 * recording / requests
            request_ms = 1000 * seconds[False] / requests          # telemetry off
            out[name] = {
                "requests_per_block": len(bodies), "inputs_per_request": units, "pairs": pairs,
                "off_per_second": n / seconds[False], "on_per_second": n / seconds[True],
                "throughput_ratio": wall, "throughput_ratio_95ci": wall_ci,
                "cpu_ratio": cpu, "cpu_ratio_95ci": cpu_ci,     # requests per CPU-second, on/off
                "mean_request_ms_off": request_ms,
                "request_thread_us": request_thread_us,         # telemetry.record() in the request
                "telemetry_thread_us": batch_us,                # recording it, in a batch
                "cost_percent": 100 * (request_thread_us + batch_us) / (1000 * request_ms),
            }
    finally:
        telemetry._worker.reset()
        telemetry._worker = process_worker
        telemetry.reset()
        service_module.telemetry = telemetry
        for provider in sdk:
            provider.shutdown()
        svc.queue.stop()        # its inference workers: none left running after the measurement
    return out


AZURE_RECORD = """
import json, time
from azure.monitor.opentelemetry import configure_azure_monitor
configure_azure_monitor(logger_name="embedding_core")        # as the Functions worker does
from opentelemetry import context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
context.attach(TraceContextTextMapPropagator().extract(      # as before each invocation
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}))
from embedding_core import telemetry
from embedding_core.pipeline import Trace
trace = Trace("0" * 32, route="/embeddings", dialect="azure", caller="key:3f2a9c1e",
              deployment="all-MiniLM-L6-v2", inputs=1, images=0, tokens=12, encoding="float",
              dimensions=384, queue_s=0.0002, inference_s=0.004)
if telemetry.mode() != "existing":
    raise SystemExit(f"telemetry mode {telemetry.mode()}, not the distro's")
telemetry._worker.BATCH_DELAY_S = 3600
def batch(n):
    for _ in range(n):
        telemetry.record(trace, method="POST", status=200, error_code=None,
                         start_ns=time.time_ns(), duration_s=0.005)
    t0 = time.process_time()
    telemetry.flush()                                     # what the telemetry thread does
    return (time.process_time() - t0) / n
batch(500)
per = sorted(batch(40) for _ in range(200))              # batches of 40, 200 requests/s at 5/s
print(json.dumps({"per_request_us": per[len(per) // 2] * 1e6}))
"""


def azure_record_cost(env: dict[str, str]) -> dict:
    """One record() call with the Azure Monitor distro configured as on Azure (subprocess)."""
    res = subprocess.run([sys.executable, "-c", AZURE_RECORD], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- cold start -----------------------------------------------------------------------------------

COLD = """
import json, os, sys, time
from embedding_core import telemetry          # imports no OpenTelemetry code
preconfigure_s = None
if os.environ.get("PRECONFIGURE") == "azure":       # the Functions worker, before the import
    t = time.perf_counter()
    from azure.monitor.opentelemetry import configure_azure_monitor
    configure_azure_monitor(logger_name="embedding_core")
    preconfigure_s = time.perf_counter() - t
mode = telemetry.mode()                       # what the first request will decide
t0 = time.perf_counter()
import function_app
t1 = time.perf_counter()
import azure.functions as func
fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}
r = fns['embeddings'](func.HttpRequest('POST', 'http://localhost/embeddings',
    headers={'api-key': 'bench-key-00000000'}, params={'api-version': '2024-05-01-preview'},
    body=b'{"input": ["hello world"]}'))
if r.status_code != 200:
    raise SystemExit(r.get_body())
t2 = time.perf_counter()
telemetry.flush()
print(json.dumps({"import_s": t1 - t0, "first_embedding_s": t2 - t0, "mode": mode,
                  "preconfigure_s": preconfigure_s}))
"""


class Sink:
    """Loopback HTTP endpoint answering like Application Insights ingestion."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = b""
                if "track" in self.path:
                    import gzip
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    n = len(json.loads(body)) if body.startswith(b"[") else len(body.splitlines())
                    reply = json.dumps({"itemsReceived": n, "itemsAccepted": n,
                                        "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def environments(sink: "Sink") -> tuple[dict[str, str], dict[str, str]]:
    """The base environment, and the Azure settings of infra/ exporting to ``sink``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EMBEDDINGS_", "OTEL_", "APPLICATIONINSIGHTS_"))}
    base["EMBEDDINGS_API_KEYS"] = "bench-key-00000000"
    azure = {"APPLICATIONINSIGHTS_CONNECTION_STRING":
             "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
             f"IngestionEndpoint={sink.url}/;LiveEndpoint={sink.url}/",
             "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
             "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
             "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
             "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS":
                 "azure_sdk,django,fastapi,flask,httpx,psycopg2,requests,urllib3",
             "OTEL_METRICS_EXEMPLAR_FILTER": "always_off",
             "FUNCTIONS_WORKER_RUNTIME": "python"}
    return base, azure


def cold_start(repeats: int) -> dict:
    sink = Sink()
    base, azure = environments(sink)
    modes = {
        "off": {},
        "console": {"EMBEDDINGS_TELEMETRY": "console"},
        "azure, configured by the app after the first request": azure,
        "azure, configured before the import (Functions worker)": {**azure,
                                                                   "PRECONFIGURE": "azure"},
    }
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(repeats):                     # interleaved: each repeat runs every mode
        for name, env in modes.items():
            res = subprocess.run([sys.executable, "-c", COLD], cwd=ROOT, env={**base, **env},
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"{name}: {res.stderr[-2000:]}")
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    sink.server.shutdown()
    out = {}
    for name, rs in runs.items():
        out[name] = {"mode": rs[0]["mode"], "repeats": len(rs),
                     "import_s": statistics.median(r["import_s"] for r in rs),
                     "first_embedding_s": statistics.median(r["first_embedding_s"] for r in rs)}
        if rs[0]["preconfigure_s"] is not None:
            out[name]["distro_configure_s"] = statistics.median(r["preconfigure_s"] for r in rs)
    return out


def report(r: dict) -> str:
    lines = ["telemetry overhead (in-process, real models, one client; on = every span sampled, "
             "batched, exporters discarding)"]
    for name in ("single", "batch32") if "throughput" in r else ():
        t = r["throughput"][name]
        lines.append(
            f"  {name:11} {t['mean_request_ms_off']:7.2f} ms/request: telemetry "
            f"{t['request_thread_us']:.1f} µs in the request thread + "
            f"{t['telemetry_thread_us']:.1f} µs in the telemetry thread = "
            f"{t['cost_percent']:.2f} % of the request")
        lines.append(
            f"  {'':11} paired blocks ({t['pairs']}): throughput on/off "
            f"{t['throughput_ratio']:.4f} (95 % CI {t['throughput_ratio_95ci'][0]:.4f}-"
            f"{t['throughput_ratio_95ci'][1]:.4f}), per CPU-second {t['cpu_ratio']:.4f} "
            f"({t['cpu_ratio_95ci'][0]:.4f}-{t['cpu_ratio_95ci'][1]:.4f})")
    a = (r.get("throughput") or {}).get("azure_distro")
    if a:
        lines.append(f"  with the Azure Monitor distro as on Azure (rate-limited sampler, host "
                     f"context, exemplars off): {a['per_request_us']:.1f} µs per request "
                     "recorded in batches")
    for name, s in (r.get("cold_start") or {}).items():
        extra = (f", distro configure {s['distro_configure_s'] * 1000:.0f} ms before it"
                 if "distro_configure_s" in s else "")
        lines.append(f"  cold start, {name} [{s['mode']}]: import function_app "
                     f"{s['import_s'] * 1000:.0f} ms, first embedding "
                     f"{s['first_embedding_s'] * 1000:.0f} ms{extra}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    run_dir = ROOT / "bench" / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ap.add_argument("--out", default=str(run_dir / "telemetry.json"),
                        help="default: a new directory under bench/runs/ (git-ignored)")
    ap.add_argument("--rounds", type=int, default=None, help="off/on pairs per workload")
    ap.add_argument("--repeats", type=int, default=5, help="cold starts per mode")
    ap.add_argument("--only", choices=("throughput", "cold"), default=None)
    args = ap.parse_args()
    r: dict = {}
    if args.smoke:
        r["throughput"] = throughput(args.rounds or 2, 10, 1)   # seconds
    else:
        if args.only != "cold":
            r["throughput"] = throughput(args.rounds or 40, 40, 2)
            sink = Sink()
            base, azure = environments(sink)
            r["throughput"]["azure_distro"] = azure_record_cost({**base, **azure})
            sink.server.shutdown()
        if args.only != "throughput":
            r["cold_start"] = cold_start(args.repeats)
    r["machine"] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    print(report(r))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
