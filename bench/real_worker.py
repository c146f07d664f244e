"""function_app.py in Microsoft's Azure Functions Python worker, behind a stand-in for the host's
gRPC side: what the local host emulates, run by the real thing.

The worker (``azure_functions_worker``) runs as its own process, as on Azure, and talks to this
script over its gRPC protocol (FunctionRpc.proto): WorkerInitRequest, FunctionsMetadataRequest
(the worker indexes function_app.py), a FunctionLoadRequest per indexed function, then
InvocationRequests, several at once. Each request's RpcHttp is built as azure-functions-host
builds it for this worker's capabilities (GrpcMessageConversionExtensions.ToRpcHttp with
RawHttpBodyBytes and RpcHttpBodyOnly): the body as bytes, header names lowercased and repeated
values joined with ",", query parameters without a value dropped, route values as params. The
worker runs the sync functions in its thread pool (PYTHON_THREADPOOL_THREAD_COUNT) and forwards
log records as RpcLog messages, which are collected.

- ``check``: routes as the worker indexes them, vectors against sentence-transformers' and
  in-process, every text input alone against in a batch and in 48 concurrent invocations, the
  OpenAI routes with route values, errors, an image, a repeated credential header, and what the
  worker's log stream carries. Exits 1 on a failed check.
- ``rate``: one-sentence requests from 8 threads against requests of 32 from 2 (as ``make
  bench``), and an empty ``GET /health`` from 8, interleaved rounds: rates and the CPU of the
  worker process and of this one (the stand-in host and the client threads) per request.

Not part of ``make bench`` or ``make test``: the worker is not on PyPI (its last upload there,
1.1.9, is from 2020) and the Functions host itself (.NET) does not run here, so this measures
the worker, not the host in front of it. Setup, once: the app as deployed, then the worker's own
pins over it in a second step (grpcio 1.59 and protobuf 4.25 on Python 3.12: below the lock's
protobuf and opentelemetry-proto's >= 5, so one resolution cannot hold both; pip reports the
conflict and installs, as on Azure, where the worker's protobuf is the one loaded):

    git clone -q --branch 4.34.0 https://github.com/Azure/azure-functions-python-worker /tmp/pyworker
    python3.12 -m venv .venv-worker     # what Azure runs (3.11 works the same way)
    .venv-worker/bin/pip install -r requirements.txt
    .venv-worker/bin/pip install grpcio==1.59.5 grpcio-tools==1.59.5 'protobuf~=4.25.3' \\
        'python-dateutil~=2.9.0' azurefunctions-extensions-base==1.1.0
    .venv-worker/bin/python bench/real_worker.py --worker /tmp/pyworker check
    .venv-worker/bin/python bench/real_worker.py --worker /tmp/pyworker rate --out /tmp/real-worker.json
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
KEY = "real-worker-check-key-01"
BASE = "https://func-api.azurewebsites.net"
API = "?api-version=2024-05-01-preview"


def generate_protos(worker: Path) -> None:
    """The worker's gRPC stubs, as its own build makes them (tests/test_setup.py, gen_grpc)."""
    out_dir = worker / "azure_functions_worker" / "protos"
    if (out_dir / "FunctionRpc_pb2.py").exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "stage" / "azure_functions_worker" / "protos"
        built = Path(tmp) / "built"
        shutil.copytree(out_dir / "_src" / "src" / "proto", stage)
        built.mkdir()
        for proto in ("shared/NullableTypes.proto", "identity/ClaimsIdentityRpc.proto",
                      "FunctionRpc.proto"):
            subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I",
                            "azure_functions_worker/protos", "--python_out", str(built),
                            "--grpc_python_out", str(built),
                            f"azure_functions_worker/protos/{proto}"],
                           check=True, cwd=stage.parent.parent)
        for path in built.rglob("*.py"):
            text = re.sub(r"\nimport (.*?_pb2)",
                          r"\nfrom azure_functions_worker.protos import \g<1>", path.read_text())
            text = re.sub(r"from ([a-z]*) (import.*_pb2)",
                          r"from azure_functions_worker.protos.\g<1> \g<2>", text)
            target = out_dir / path.relative_to(built)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


def worker_env(worker: Path, env: dict[str, str]) -> dict[str, str]:
    """The worker's environment: this process's without the caller's settings (bench.Server's
    rule: an APPLICATIONINSIGHTS_CONNECTION_STRING would make it export telemetry, EMBEDDINGS_*
    would set limits the local host compared with never gets), then ``env``."""
    import bench
    return {**bench.clean_env(), **env, "PYTHONPATH": str(worker),
            "AzureWebJobsScriptRoot": str(ROOT), "FUNCTIONS_WORKER_RUNTIME": "python"}


class GrpcHost:
    """The host's side of the worker's event stream, enough for HTTP-triggered functions."""

    def __init__(self, worker: Path, env: dict[str, str], log_file: str = os.devnull):
        import grpc

        from azure_functions_worker import protos
        self.protos = protos
        self._out: queue.Queue = queue.Queue()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._replies: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._ended = False                 # the worker's stream has ended: no more answers
        self.logs: list = []
        self.functions: dict = {}
        host = self

        class Servicer(protos.FunctionRpcServicer):
            def EventStream(self, requests, context):
                first = next(requests)
                if first.WhichOneof("content") != "start_stream":
                    raise RuntimeError(f"the worker began with {first.WhichOneof('content')}")
                threading.Thread(target=host._read, args=(requests,), daemon=True).start()
                host._connected.set()
                while (msg := host._out.get()) is not None:
                    yield msg

        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4), options=[
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.max_send_message_length", 2**31 - 1)])
        protos.add_FunctionRpcServicer_to_server(Servicer(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        worker_id = str(uuid.uuid4())
        penv = worker_env(worker, env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "azure_functions_worker", "--host", "127.0.0.1", "--port",
             str(port), "--workerId", worker_id, "--requestId", str(uuid.uuid4()),
             "--grpcMaxMessageLength", str(2**31 - 1)],
            cwd=ROOT, env=penv, stdout=open(log_file, "wb"), stderr=subprocess.STDOUT)
        if not self._connected.wait(60):
            self.close()
            raise RuntimeError("the worker did not connect")
        self.init = self._ask("worker_init_request", protos.WorkerInitRequest(
            host_version="4.1040.0", worker_directory=str(worker),
            function_app_directory=str(ROOT)), "worker_init_response")
        meta = self._ask("functions_metadata_request", protos.FunctionsMetadataRequest(
            function_app_directory=str(ROOT)), "function_metadata_response")
        if meta.result.status != protos.StatusResult.Success:
            raise RuntimeError(f"indexing failed: {meta.result.exception.message}")
        for fm in meta.function_metadata_results:
            fm.properties["worker_indexed"] = "True"
            loaded = self._ask("function_load_request", protos.FunctionLoadRequest(
                function_id=fm.function_id, metadata=fm), "function_load_response")
            if loaded.result.status != protos.StatusResult.Success:
                raise RuntimeError(f"{fm.name}: {loaded.result.exception.message}")
            self.functions[fm.name] = fm

    def _read(self, stream) -> None:
        import grpc
        try:
            for msg in stream:
                kind = msg.WhichOneof("content")
                body = getattr(msg, kind)
                if kind == "rpc_log":
                    self.logs.append(body)
                elif kind == "invocation_response":
                    with self._lock:
                        fut = self._pending.pop(body.invocation_id, None)
                    if fut is not None:
                        fut.set_result(body)
                else:
                    self._reply_queue(kind).put(body)
        except grpc.RpcError:
            pass
        finally:
            # The stream has ended (the worker exited or dropped it): no answer will come, so
            # the invocations waiting for one fail now, not after their time-out (300 s each,
            # and a rate's client threads then ended with the load reported as served).
            with self._lock:
                self._ended = True
                pending, self._pending = self._pending, {}
            for fut in pending.values():
                fut.set_exception(RuntimeError("the worker's stream ended"))

    def _reply_queue(self, kind: str) -> queue.Queue:
        with self._lock:
            return self._replies.setdefault(kind, queue.Queue())

    def _ask(self, field: str, message, reply: str):
        self._out.put(self.protos.StreamingMessage(**{field: message}))
        return self._reply_queue(reply).get(timeout=120)

    def routes(self) -> dict[str, tuple[str, list[str]]]:
        out = {}
        for name, fm in self.functions.items():
            for raw in fm.raw_bindings:
                b = json.loads(raw)
                if b.get("type") == "httpTrigger":
                    out[name] = (b.get("route"), sorted(m.upper() for m in b.get("methods", [])))
        return out

    def invoke(self, name: str, method: str, path: str, headers, body: bytes = b"",
               params: dict[str, str] | None = None, timeout: float = 300):
        """(status, headers, body) of one invocation, the request as the host sends it."""
        p = self.protos
        fm = self.functions[name]
        trigger = next(n for n, b in fm.bindings.items() if b.type == "httpTrigger")
        http = p.RpcHttp(method=method, url=BASE + path)
        joined: dict[str, str] = {}
        for k, v in (headers.items() if isinstance(headers, dict) else headers):
            k = k.lower()
            joined[k] = f"{joined[k]},{v}" if k in joined else v
        http.headers.update(joined)
        query: dict[str, str] = {}
        for k, v in parse_qsl(urlsplit(path).query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
        http.query.update({k: v for k, v in query.items() if v})
        http.params.update(params or {})
        if body:                        # the host sends a body only with a Content-Length > 0
            http.body.bytes = body
        request = p.InvocationRequest(
            invocation_id=str(uuid.uuid4()), function_id=fm.function_id,
            input_data=[p.ParameterBinding(name=trigger, data=p.TypedData(http=http))])
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._ended:
                raise RuntimeError("the worker's stream has ended")
            self._pending[request.invocation_id] = fut
        self._out.put(p.StreamingMessage(invocation_request=request))
        res = fut.result(timeout)
        if res.result.status != p.StatusResult.Success:
            return 500, {}, res.result.exception.message.encode()
        h = res.return_value.http
        kind = h.body.WhichOneof("data")
        out = h.body.bytes if kind == "bytes" else h.body.string.encode() if kind == "string" \
            else b""
        return int(h.status_code or 200), dict(h.headers), out

    def close(self) -> None:
        self._out.put(None)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.server.stop(1)


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(args, **env: str) -> GrpcHost:
    generate_protos(args.worker)
    sys.path.insert(0, str(args.worker))
    return GrpcHost(args.worker, {"EMBEDDINGS_API_KEYS": KEY,
                                  "PYTHON_THREADPOOL_THREAD_COUNT": str(args.threads), **env},
                    args.worker_log)


def check(args) -> int:
    import numpy as np
    host = start(args)
    failures: list[str] = []
    results: dict = {}
    jh = {"content-type": "application/json", "api-key": KEY}

    def expect(label: str, ok: bool, detail="") -> None:
        results[label] = "ok" if ok else f"FAILED {detail}"
        if not ok:
            failures.append(f"{label}: {detail}")

    def vecs(body: bytes):
        return np.array([d["embedding"] for d in json.loads(body)["data"]], dtype=np.float32)

    def embed(texts, model=None):
        body = {"input": texts, **({"model": model} if model else {})}
        status, headers, out = host.invoke("embeddings", "POST", "/embeddings" + API, jh,
                                           json.dumps(body).encode())
        return status, headers, out

    try:
        routes = host.routes()
        served = {r for r, _ in routes.values()}
        expect("indexing: every route of function_app", {
            "embeddings", "images/embeddings", "info", "health", "v1/embeddings", "v1/models",
            "v1/models/{model}", "openai/deployments/{deployment}/embeddings",
            "openai/v1/embeddings", "openai/v1/models", "openai/v1/models/{model}",
            "openapi.json", "swagger.json", "{*path}"} <= served, sorted(served))
        ref = json.loads((ROOT / "tests/data/minilm_reference.json").read_text())
        keep = [i for i, n in enumerate(ref["tokens_untruncated"]) if n <= 256]
        texts = [ref["texts"][i] for i in keep]
        st_vecs = np.array([ref["embeddings"][i] for i in keep], dtype=np.float32)

        def cos(a, b):
            return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        status, headers, out = embed(texts, "all-MiniLM-L6-v2-exact")
        exact = cos(vecs(out), st_vecs).min() if status == 200 else 0.0
        expect("exact deployment within 0.9999 of sentence-transformers", exact >= 0.9999,
               f"{status} {exact}")
        status, headers, out = embed(texts)
        batch = vecs(out)
        expect("default deployment within 0.995 of sentence-transformers",
               cos(batch, st_vecs).min() >= 0.995, cos(batch, st_vecs).min())
        expect("timing and request id headers reach the host",
               {"x-request-id", "x-total-time", "x-queue-time", "x-inference-time"}
               <= {h.lower() for h in headers}, sorted(headers))
        sys.path.insert(0, str(ROOT))
        os.environ["EMBEDDINGS_API_KEYS"] = KEY
        import azure.functions as func
        from function_app import app       # in-process, the same files: bitwise the same
        fn = next(f for f in app.get_functions() if f.get_function_name() == "embeddings")
        res = fn.get_user_function()(func.HttpRequest(
            "POST", BASE + "/embeddings" + API, headers=jh,
            params={"api-version": API.split("=")[1]}, body=json.dumps({"input": texts}).encode()))
        expect("bitwise equal to the same request in-process", np.array_equal(
            vecs(res.get_body()), batch))
        alone = [vecs(embed([t])[2])[0] for t in texts[:8]]

        def one(i: int):
            status, _, out = embed([texts[i % 8]])
            return i, status, out
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            outs = list(pool.map(one, range(48)))
        expect("48 concurrent invocations: all 200", {s for _, s, _ in outs} == {200},
               sorted({s for _, s, _ in outs}))
        diff = max(float(np.abs(vecs(o)[0] - alone[i % 8]).max()) for i, s, o in outs
                   if s == 200)
        expect("alone, in a batch and concurrent: equal", diff <= 1e-5 and np.abs(
            batch[:8] - np.stack(alone)).max() <= 1e-5, diff)
        status, _, out = host.invoke("openai_embeddings", "POST", "/v1/embeddings", {
            "content-type": "application/json", "authorization": f"Bearer {KEY}"},
            json.dumps({"input": "hello", "model": "all-MiniLM-L6-v2"}).encode())
        expect("OpenAI route", status == 200 and json.loads(out)["object"] == "list", status)
        status, _, out = host.invoke(
            "azure_openai_embeddings", "POST",
            "/openai/deployments/all-MiniLM-L6-v2/embeddings?api-version=2024-10-21", jh,
            json.dumps({"input": ["hello"]}).encode(), {"deployment": "all-MiniLM-L6-v2"})
        expect("Azure OpenAI route with its route value", status == 200, (status, out[:200]))
        status, _, out = host.invoke("openai_model", "GET", "/v1/models/all-MiniLM-L6-v2",
                                     {"api-key": KEY}, params={"model": "all-MiniLM-L6-v2"})
        expect("GET /v1/models/{model}", status == 200 and b'"id":"all-MiniLM-L6-v2"' in out,
               (status, out[:200]))
        status, _, out = host.invoke("not_found", "GET", "/nope", {}, params={"path": "nope"})
        expect("catch-all 404 in the app's error shape",
               status == 404 and json.loads(out)["error"]["code"] == "NotFound", status)
        status, _, out = host.invoke("embeddings", "POST", "/embeddings" + API, jh, b'{"input": [')
        expect("bad JSON: 400 InvalidRequestBody",
               status == 400 and b"InvalidRequestBody" in out, (status, out[:200]))
        status, headers, out = host.invoke("embeddings", "POST", "/embeddings" + API,
                                           {"content-type": "application/json"}, b'{"input":["x"]}')
        expect("no credentials: 401 with WWW-Authenticate",
               status == 401 and "WWW-Authenticate" in headers, (status, headers))
        status, _, out = host.invoke("embeddings", "POST", "/embeddings" + API, [
            ("content-type", "application/json"), ("api-key", "a-gateway-key-000000000"),
            ("api-key", KEY)], b'{"input":["x"]}')
        expect("a credential header sent twice (joined by the host) with a valid value",
               status == 200, status)
        picture = (ROOT / "tests/data/images/coffee.jpg").read_bytes()
        status, _, out = host.invoke("image_embeddings", "POST", "/images/embeddings" + API, jh,
                                     json.dumps({"input": [{"image": "data:image/jpeg;base64,"
                                                 + base64.b64encode(picture).decode()}]}).encode())
        expect("an image", status == 200 and len(json.loads(out)["data"][0]["embedding"]) == 384,
               (status, out[:200]))
        status, _, out = host.invoke("health", "GET", "/health", {})
        from embedding_core import build     # the smoke script's --expect-build local
        expect("GET /health", status == 200 and json.loads(out)["status"] == "ok"
               and json.loads(out)["build"] == build.digest(), out[:200])
        records: dict[str, int] = {}
        for log in host.logs:
            key = f"{log.category} ({'in an invocation' if log.invocation_id else 'outside'})"
            records[key] = records.get(key, 0) + 1
        results["worker log stream: records by logger"] = records
        leaked = [log.message for log in host.logs if KEY in log.message]
        expect("no key in the worker's log stream", not leaked, leaked[:1])
        results["worker"] = {"capabilities": dict(host.init.capabilities),
                             "functions": len(host.functions)}
    finally:
        host.close()
    print(json.dumps(results, indent=1))
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


def rate(args) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    import workloads
    short = workloads.build(1024, 0, 0)["short"]
    short = (short * (1 + 1024 // len(short)))[:1024]
    host = start(args)
    jh = {"content-type": "application/json", "api-key": KEY}
    singles = [json.dumps({"input": [t]}).encode() for t in short[:768]]
    batched = [json.dumps({"input": short[i:i + 32]}).encode() for i in range(0, 1024, 32)]

    def run(name: str, path: str, bodies: list, clients: int) -> tuple[float, float, float]:
        feed = iter(bodies)
        lock = threading.Lock()
        errors: list[Exception] = []

        def client() -> None:
            while True:
                with lock:
                    body = next(feed, None)
                if body is None:
                    return
                try:
                    status, _, out = host.invoke(name, "POST" if body else "GET", path, jh, body)
                except Exception as exc:  # noqa: BLE001 - no answer (a time-out: the worker gone)
                    errors.append(exc)
                    return
                if status != 200:
                    errors.append(RuntimeError(f"{status}: {out[:200]!r}"))
                    return
        t0, w0, h0 = time.perf_counter(), process_cpu(host.proc.pid), process_cpu(os.getpid())
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        wall, worker_cpu = time.perf_counter() - t0, process_cpu(host.proc.pid) - w0
        if host.proc.poll() is not None:     # its CPU is then of a process that is gone
            raise RuntimeError(f"the worker exited (code {host.proc.returncode})")
        return wall, worker_cpu, process_cpu(os.getpid()) - h0

    rounds = []
    try:
        run("embeddings", "/embeddings" + API, batched[:4] + singles[:64], 8)    # warm up
        for r in range(args.rounds):
            row = {}
            for label, name, path, bodies, clients, n in (
                    ("single", "embeddings", "/embeddings" + API, singles, 8, len(singles)),
                    ("batched", "embeddings", "/embeddings" + API, batched, 2, 1024),
                    ("health", "health", "/health", [b""] * 2000, 8, 2000)):
                wall, worker_cpu, host_cpu = run(name, path, bodies, clients)
                row[label] = {"per_s": n / wall, "worker_cpu_ms": 1000 * worker_cpu / n,
                              "host_and_clients_cpu_ms": 1000 * host_cpu / n}
            row["ratio"] = row["single"]["per_s"] / row["batched"]["per_s"]
            rounds.append(row)
            print(f"round {r}: " + ", ".join(
                f"{k} {v['per_s']:.0f}/s worker {v['worker_cpu_ms']:.2f} ms host+clients "
                f"{v['host_and_clients_cpu_ms']:.2f} ms" for k, v in row.items() if k != "ratio")
                + f"; ratio {row['ratio']:.3f}", flush=True)
    finally:
        host.close()

    def median(path):
        values = [row[path[0]][path[1]] if len(path) == 2 else row[path[0]] for row in rounds]
        return statistics.median(values)
    summary = {"ratio_single_to_batched": {"median": median(("ratio",)),
                                           "rounds": [r["ratio"] for r in rounds]}}
    for label in ("single", "batched", "health"):
        summary[label] = {k: median((label, k)) for k in rounds[0][label]}
    out = {"what": "function_app.py in azure_functions_worker 4.34.0 behind bench/real_worker.py's "
                   "gRPC stand-in for the host; one-sentence requests from 8 threads, requests of "
                   "32 from 2, GET /health from 8; CPU per request (per sentence when batched)",
           "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                        .splitlines() if ln.startswith("model name")), "?"),
           "cores": len(os.sched_getaffinity(0)), "threads": args.threads,
           "summary": summary, "rounds": rounds}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, required=True,
                        help="a checkout of github.com/Azure/azure-functions-python-worker")
    parser.add_argument("--threads", type=int, default=8,
                        help="PYTHON_THREADPOOL_THREAD_COUNT (infra/ sets 8 on its default "
                             "2,048 MB instances)")
    parser.add_argument("--worker-log", default=os.devnull, help="the worker's console output")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check")
    r = sub.add_parser("rate")
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--out")
    args = parser.parse_args()
    args.worker = args.worker.resolve()
    return check(args) if args.cmd == "check" else rate(args)


if __name__ == "__main__":
    sys.exit(main())
