"""Side-by-side benchmark: the service against sentence-transformers fp32, in one run.

    make bench        # full run (needs .venv-tools for the reference), writes bench/runs/<time>/
    make bench-smoke  # seconds, tiny workloads, no reference, no thresholds (CI)

Every figure is reported in absolute terms and as a ratio to the reference measured in the same
run. The reference (sentence-transformers fp32 in .venv-tools) runs as a worker process, so its
rounds interleave with the service's and both see the same machine minute by minute; throughputs
are medians of the rounds. Targets are printed next to the ratios; nothing here fails on a target.

Workloads: short sentences (requests of 32, 2 clients), mixed lengths up to the 256-token limit,
one-sentence requests from 8 clients, one-sentence requests while a 256 × 256-token request runs
(fairness), the largest request the limits allow (time and peak RSS), 1,000 held-out texts
(cosine to the reference), the retrieval set, batch independence over HTTP, cold start, images.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402

KEY = "bench-key-00000000"
Q = "?api-version=2024-05-01-preview"
TOOLS_PY = ROOT / ".venv-tools" / "bin" / "python"


# -- helpers --------------------------------------------------------------------------------------

# What the caller's environment must not change in the processes measured: the app's settings,
# its telemetry (an APPLICATIONINSIGHTS_CONNECTION_STRING in the shell, as `azd env get-values`
# gives, turns on the Azure Monitor exporter: every request then also records and exports, to
# wherever the string points) and the local host's settings (its function threads, limits).
CALLER_SETTINGS = ("EMBEDDINGS_", "APPLICATIONINSIGHTS_", "OTEL_", "LOCAL_HOST_",
                   "PYTHON_THREADPOOL_THREAD_COUNT", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT")


def clean_env() -> dict[str, str]:
    """This process's environment without :data:`CALLER_SETTINGS`."""
    return {k: v for k, v in os.environ.items() if not k.startswith(CALLER_SETTINGS)}


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a TCP socket listening on ``port``; None where /proc cannot
    tell (no /proc, or no listener on the port at all in its tables, as under WSL1)."""
    for attempt in range(3):        # the tables are read in chunks: a row may be missed once
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                f = row.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:     # 0A: LISTEN
                    inodes.add(f"socket:[{f[9]}]")
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return None
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:             # closed meanwhile
                pass
        if inodes:                      # the port's listener is another process's
            return False
        time.sleep(0.05)
    return None


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and the processes it started (Linux /proc; else ``proc`` alone), reaped."""
    pids, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                todo += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            pass
    for pid in reversed(pids[1:]):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.kill()
    proc.wait()


class Server:
    def __init__(self, env: dict[str, str] | None = None, cpus: set[int] | None = None):
        """The local host; ``cpus``: the only CPUs it may run on (it sizes itself to them)."""
        full = clean_env()
        full.update({"EMBEDDINGS_API_KEYS": KEY, "LOG_LEVEL": "WARNING", **(env or {})})
        self.cpus = cpus
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.local_host", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        u = urlsplit(line.strip().rsplit(" ", 1)[-1])
        if not (u.scheme == "http" and u.hostname and u.port):
            # Not started (e.g. a package missing from the interpreter's environment): say why,
            # rather than time requests that never reach it.
            kill_tree(self.proc)
            rest = self.proc.stdout.read()
            self.proc.stdout.close()
            raise RuntimeError(f"the local host ({sys.executable}) did not start:\n{line}{rest}")
        # The process started must be the one listening: its pid is what the CPUs are set on
        # and the peak RSS and CPU time are read from. An interpreter that is a wrapper running
        # Python as its child (no exec) answers from that child: the server would run on every
        # CPU and its figures be the wrapper's.
        if listens_on(self.proc.pid, u.port) is False:
            kill_tree(self.proc)
            self.proc.stdout.close()
            raise RuntimeError(f"{sys.executable} runs the local host in another process than "
                               f"the one started (pid {self.proc.pid}): give the interpreter")
        # Drain its output all along (a full pipe would stall the server on its next log line).
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.host, self.port = u.hostname, u.port
        if cpus:
            # Every thread it has (it is listening, before its first request: it sizes its
            # workers to the CPUs it may use then, and later threads inherit the affinity).
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                os.sched_setaffinity(int(tid), cpus)

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
        """Its VmHWM (MiB); an error once it has exited (the status file of an exited child not
        yet waited for has no VmHWM: that was a NaN, written into the run's JSON)."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"the local host (pid {self.proc.pid}) has exited: no peak RSS")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_clients(server: Server, path: str, bodies: list, clients: int,
                send: Callable[[http.client.HTTPConnection, object], None] | None = None,
                cpus: set[int] | None = None) -> float:
    """Send ``bodies`` with ``clients`` concurrent keep-alive connections; seconds taken. The
    client threads run on ``cpus``, or else on the server's CPUs when it has been given some (as
    the Functions host shares an instance's). ``send(conn, body)`` replaces the POST to ``path``
    (it raises on a failed request); the POST raises on any answer but 200 with a vector per
    input."""
    cpus = cpus or server.cpus
    if send is None:
        def send(conn, body):
            data = server.post(conn, path, body)
            # As many vectors as inputs (orjson writes "index": one per vector); a count of the
            # bytes, ~50 µs for 32 float vectors, not a parse on the clients' CPU.
            want = len(body["input"]) if path.endswith("embeddings") and isinstance(
                body, dict) and isinstance(body.get("input"), list) else None
            if want is not None and (got := data.count(b'"index":')) != want:
                raise RuntimeError(f"{path}: 200 with {got} vectors for {want} inputs")
    todo: queue.Queue = queue.Queue()
    for b in bodies:
        todo.put(b)
    errors: list[Exception] = []

    def worker() -> None:
        if cpus:
            try:
                os.sched_setaffinity(0, cpus)     # this thread only (Linux)
            except OSError as exc:
                errors.append(exc)
                return
        try:
            conn = server.conn()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            return
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                break
            try:
                send(conn, body)
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


def process_failed(what: str, returncode: int | None, stderr: str) -> RuntimeError:
    """The error of a child process that failed: what it was, its exit status and the end of its
    stderr (a CalledProcessError of a run with capture_output gives neither the stderr nor, in
    its message, what the step was)."""
    tail = "\n".join(stderr.strip().splitlines()[-15:]) or "(nothing)"
    return RuntimeError(f"{what} failed: exit status {returncode}; its stderr ends:\n{tail}")


# -- the reference, as a worker we can interleave with -------------------------------------------

def reference_failed(what: str, returncode: int | None, stderr: str) -> RuntimeError:
    """The error of a reference process that failed (its missing answer read as a bare
    JSONDecodeError, which said neither its exit status nor why)."""
    return process_failed(f"the reference process ({TOOLS_PY} bench/reference.py {what})",
                          returncode, stderr)


class Reference:
    """sentence-transformers fp32 in the tools venv, answering one command at a time."""

    def __init__(self, w_path: str):
        self.proc = subprocess.Popen([str(TOOLS_PY), str(ROOT / "bench" / "reference.py"), w_path,
                                      "--serve", *reference_threads()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Its stderr passed on as it comes (torch's warnings, a traceback), the last lines kept
        # for the error of a reference that dies.
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._drain = threading.Thread(target=self._pass_on_stderr, daemon=True)
        self._drain.start()

    def _pass_on_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line)
            sys.stderr.write(line)

    def ask(self, **cmd) -> dict:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:             # it had exited before the command
            line = ""
        if not line:                        # it exited: no answer will come
            try:
                returncode = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                returncode = None
            self._drain.join(5)
            raise reference_failed(f"--serve, asked op={cmd.get('op')}", returncode,
                                   "".join(self.stderr_tail))
        return json.loads(line)

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:             # it has exited (its error is the run's)
            pass
        self.proc.wait(30)


def reference_threads() -> list[str]:
    """The reference's torch threads: the cores the service sizes itself to (its CPU affinity and
    cgroup limit), not os.cpu_count(), which in a container with a CPU quota would oversubscribe
    the reference."""
    from embedding_core.settings import usable_cores

    return ["--threads", str(usable_cores())]


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


# -- measurements ---------------------------------------------------------------------------------

def text_deployments() -> list[str]:
    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    reg = Registry.from_settings(Settings.from_env({}))
    default = reg.default_for("text")
    return [default.name] + [d.name for d in reg.deployments
                             if d.modality == "text" and d is not default]


def engine_in_process(w: dict, deployment: str) -> float:
    """Short sentences/s of the backend alone (no queue, no HTTP), batches of 32, run by as many
    threads as the service has inference workers (each backend session has the service's
    threads per worker), so that it shows what the process's cores can do."""
    import concurrent.futures

    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    settings = Settings.from_env({})
    reg = Registry.from_settings(settings)
    backend = reg.backend(reg.find(deployment))
    backend.encode(w["short"][:64])
    with concurrent.futures.ThreadPoolExecutor(settings.workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda c: backend.encode(c, extras={"truncate": "END"}),
                      chunks(w["short"], 32)))
        return len(w["short"]) / (time.perf_counter() - t0)


def throughput_rounds(w: dict, deployments: list[str], ref: Reference | None,
                      clients: int, rounds: int) -> dict:
    """Interleaved rounds: reference and service see the same machine minute by minute.

    Per round: the reference's short and mixed sets, then per deployment the same sets end to
    end (requests of 32, ``clients`` connections, float and base64), and for the default
    deployment single-sentence requests from 8 connections and the in-process engine; and the
    default deployment's short sentences (base64) on one core, the server and its clients pinned
    to it: the CPU of a 2048 MB Flex Consumption instance, whose host shares it."""
    server = Server()
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        one_core = Server(cpus={allowed[0]}) if len(allowed) > 1 else None
    except BaseException:
        server.stop()
        raise
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
    try:
        conn = server.conn()
        for d in deployments:
            server.post(conn, "/embeddings", {"input": w["short"][:64], "model": d})  # load
        conn.close()
        if one_core is not None:
            conn = one_core.conn()
            one_core.post(conn, "/embeddings", {"input": w["short"][:64]})
            conn.close()
        for r in range(rounds):
            steal0 = steal_ticks()
            if ref is not None:
                for name in ("short", "mixed"):
                    a = ref.ask(op="throughput", set=name)
                    add(f"ref:{name}", a["n"] / a["seconds"])
            for d in deployments:
                for name in ("short", "mixed"):
                    for fmt in ("float", "base64"):
                        if name == "mixed" and fmt == "base64":
                            continue
                        bodies = [{"input": c, "encoding_format": fmt, "truncate": "END",
                                   "model": d} for c in chunks(w[name], 32)]
                        dt = run_clients(server, "/embeddings", bodies, clients)
                        add(f"{d}:{name}_{fmt}", len(w[name]) / dt)
            d = deployments[0]
            singles = [{"input": [t], "model": d} for t in w["short"]]
            add(f"{d}:singles_8_clients", len(singles) / run_clients(server, "/embeddings",
                                                                      singles, 8))
            if one_core is not None:
                bodies = [{"input": c, "encoding_format": "base64", "truncate": "END",
                           "model": d} for c in chunks(w["short"], 32)]
                add(f"{d}:one_core_short_base64",
                    len(w["short"]) / run_clients(one_core, "/embeddings", bodies, clients))
            if steal0 is not None:
                add("steal_ticks", steal_ticks() - steal0)
            print(f"[bench] round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    finally:
        server.stop()
        if one_core is not None:
            one_core.stop()
    out = {k: {"median": statistics.median(v), "rounds": v} for k, v in samples.items()}
    out["engine_short"] = {"median": engine_in_process(w, deployments[0])}
    return out


def latency(w: dict, deployment: str, ref: Reference | None, n: int) -> dict:
    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": ["warm up"], "model": deployment})
        lat = []
        for text in w["short"][:n]:
            t0 = time.perf_counter()
            server.post(conn, "/embeddings", {"input": [text], "model": deployment})
            lat.append(time.perf_counter() - t0)
        conn.close()
    finally:
        server.stop()
    out = {"p50_ms": 1000 * percentile(lat, 0.5), "p95_ms": 1000 * percentile(lat, 0.95)}
    if ref is not None:
        rl = ref.ask(op="single", n=n)["latencies"]
        out["ref_p50_ms"], out["ref_p95_ms"] = 1000 * percentile(rl, 0.5), 1000 * percentile(rl, 0.95)
    return out


def while_running(thread: threading.Thread, gap_s: float, first_s: float | None = None):
    """Yields each time a probe may go out while ``thread`` runs: ``first_s`` (else ``gap_s``)
    after the start, then ``gap_s`` after the last probe's answer. The thread is looked at after
    the sleep, just before the probe: one sent after it ended (during the sleep before it) would
    time no contention and count as timed during it."""
    time.sleep(gap_s if first_s is None else first_s)
    while thread.is_alive():
        yield
        time.sleep(gap_s)


def fairness(w: dict, big_inputs: int, probes: int) -> dict:
    """One-sentence requests sent one after another while a request of ``big_inputs`` × 256
    tokens runs: their latency and how many were refused."""
    server = Server()
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": w["short"][:64]})
        big = {"input": w["longest"][:big_inputs], "truncate": "END"}
        result: dict = {}

        def run_big() -> None:
            c = server.conn()
            t0 = time.perf_counter()
            try:
                server.post(c, "/embeddings", big)
                result["big_s"] = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - reported, not raised in this thread
                result["big_error"] = f"{type(e).__name__}: {e}"[:300]
        t = threading.Thread(target=run_big)
        t.start()
        lat, refused, during, statuses = [], 0, 0, {}
        # 0.3 s first: the big request is admitted and running.
        for text, _ in zip(w["short"][:probes], while_running(t, 0.05, first_s=0.3)):
            t0 = time.perf_counter()
            conn.request("POST", "/embeddings" + Q, body=json.dumps({"input": [text]}),
                         headers={"api-key": KEY, "Content-Type": "application/json"})
            res = conn.getresponse()
            res.read()
            lat.append(time.perf_counter() - t0)
            refused += res.status != 200            # a 429, or any other answer but the vectors
            statuses[res.status] = statuses.get(res.status, 0) + 1
            during += 1
        t.join()
        conn.close()
    finally:
        server.stop()
    return {"big_inputs": big_inputs, "big_seconds": result.get("big_s"),
            "big_error": result.get("big_error"), "probes": during, "refused": refused,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "p50_ms": 1000 * percentile(lat, 0.5) if lat else None,
            "p95_ms": 1000 * percentile(lat, 0.95) if lat else None}


def largest_inputs() -> int:
    """How many 256-token inputs the default limits allow in one request."""
    from embedding_core.settings import Settings

    s = Settings.from_env({})
    return min(s.max_inputs, s.max_request_tokens // 256)


def largest_request(w: dict, others: tuple[str, ...] | list[str] = ()) -> dict:
    """The largest request the default limits allow (EMBEDDINGS_MAX_REQUEST_TOKENS of 256-token
    inputs, at most EMBEDDINGS_MAX_INPUTS), in a fresh server: seconds and peak RSS (MiB), on the
    default deployment, and under "others" on each deployment named (the limits are the same)."""
    n = largest_inputs()

    def one(model: str | None) -> dict:
        server = Server()
        try:
            conn = server.conn()
            extra = {"model": model} if model else {}
            server.post(conn, "/embeddings", {"input": ["warm up"], **extra})
            t0 = time.perf_counter()
            body = server.post(conn, "/embeddings",
                               {"input": w["longest"][:n], "truncate": "END", **extra})
            seconds = time.perf_counter() - t0
            return {"inputs": n, "tokens": json.loads(body)["usage"]["prompt_tokens"],
                    "seconds": seconds, "peak_rss_mb": server.peak_rss_mb()}
        finally:
            server.stop()

    out = one(None)
    if others:
        out["others"] = {d: one(d) for d in others}
    return out


def quality(w: dict, deployments: list[str], ref: Reference | None) -> dict:
    """Cosine to the reference on the held-out quality set, retrieval rank-1 on the committed
    query/document set and on ~500 held-out docstring pairs (with the mean reciprocal rank and
    how many queries' first document differs from the reference's), and batch independence
    over HTTP (alone vs inside mixed batches)."""
    retrieval = json.loads((ROOT / "tests" / "data" / "retrieval.json").read_text())
    hard = workloads.docstring_retrieval()
    server = Server()
    out: dict = {}
    try:
        conn = server.conn()

        def vectors(texts: list[str], d: str, fmt: str = "float") -> list:
            return [x["embedding"] for c in chunks(texts, 256)
                    for x in json.loads(server.post(conn, "/embeddings", {
                        "input": c, "truncate": "END", "model": d,
                        "encoding_format": fmt}))["data"]]

        def rank1(q: np.ndarray, docs: np.ndarray) -> int:
            return int(np.sum(np.argmax(q @ docs.T, axis=1) == np.arange(len(q))))

        def ranking(q: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, dict]:
            """Each query's first document, and rank-1 and mean reciprocal rank of its own."""
            scores = q @ docs.T
            own = scores[np.arange(len(q)), np.arange(len(q))]
            ranks = np.sum(scores > own[:, None], axis=1) + 1
            top = np.argmax(scores, axis=1)
            # Rank-1 and MRR by one rule: the own document's rank counts strictly higher scores.
            return top, {"rank1": int(np.sum(ranks == 1)),
                         "mrr": float(np.mean(1.0 / ranks)), "of": len(q)}

        ref_top = None
        if ref is not None:
            ref_q = np.asarray(ref.ask(op="vectors", set="quality")["vectors"], dtype=np.float32)
            rq = np.asarray(ref.ask(op="vectors", texts=retrieval["queries"])["vectors"])
            rd = np.asarray(ref.ask(op="vectors", texts=retrieval["documents"])["vectors"])
            out["reference_rank1"] = rank1(rq, rd)
            ref_top, out["reference_docstrings"] = ranking(
                np.asarray(ref.ask(op="vectors", texts=hard["queries"])["vectors"], dtype=np.float32),
                np.asarray(ref.ask(op="vectors", texts=hard["documents"])["vectors"], dtype=np.float32))
        for d in deployments:
            v = np.asarray(vectors(w["quality"], d), dtype=np.float32)
            q = np.asarray(vectors(retrieval["queries"], d), dtype=np.float32)
            docs = np.asarray(vectors(retrieval["documents"], d), dtype=np.float32)
            entry = {"n": len(v), "rank1": rank1(q, docs), "of": len(q)}
            top, entry["docstrings"] = ranking(
                np.asarray(vectors(hard["queries"], d), dtype=np.float32),
                np.asarray(vectors(hard["documents"], d), dtype=np.float32))
            if ref is not None:
                cos = np.sum(v * ref_q, axis=1)
                entry.update(min=float(cos.min()), median=float(np.median(cos)))
                right, ref_right = top == np.arange(len(top)), ref_top == np.arange(len(top))
                entry["docstrings"].update(
                    first_as_reference=int(np.sum(top == ref_top)),
                    only_reference_right=int(np.sum(ref_right & ~right)),
                    only_this_right=int(np.sum(right & ~ref_right)))
            # batch independence: 100 texts alone vs in shuffled batches of 32 with others; half
            # short, half at the 256-token limit (on CPUs with AMX those run on OpenVINO)
            rng = np.random.default_rng(7)
            probe = w["quality"][:50] + w["longest"][:50]
            mixed = list(probe) + list(w["mixed"][:92])
            order = rng.permutation(len(mixed))
            shuffled = [mixed[i] for i in order]
            pos = {int(i): k for k, i in enumerate(order)}
            worst, differ = 0.0, {}
            for fmt in ("float", "int8", "uint8", "binary", "ubinary"):
                alone = [vectors([t], d, fmt)[0] for t in probe]
                batched = [x["embedding"] for c in chunks(shuffled, 32)
                           for x in json.loads(server.post(conn, "/embeddings", {
                               "input": c, "truncate": "END", "model": d,
                               "encoding_format": fmt}))["data"]]
                together = [batched[pos[i]] for i in range(len(probe))]
                if fmt == "float":
                    worst = float(np.abs(np.asarray(alone) - np.asarray(together)).max())
                else:
                    differ[fmt] = sum(a != b for a, b in zip(alone, together))
            entry["batch_invariance"] = {"float_max_abs": worst, "quantised_rows_differing": differ}
            out[d] = entry
        conn.close()
    finally:
        server.stop()
    return out


def cold_start(repeats: int, long_text: str) -> dict:
    """Import time and first embedding of fresh processes, median of ``repeats``: the first
    embedding of "hello world", and, in other processes, of ``long_text`` (129-256 tokens: on
    CPUs with AMX its first request also imports and compiles OpenVINO, openvino_session.py)."""
    code = (
        "import sys, time; t0 = time.perf_counter()\n"
        "import function_app\n"
        "t1 = time.perf_counter()\n"
        "import azure.functions as func, json\n"
        "fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}\n"
        "r = fns['embeddings'](func.HttpRequest('POST', 'http://localhost/embeddings', "
        "headers={'api-key': 'first-embedding-key'}, params={'api-version': '2024-05-01-preview'}, "
        "body=json.dumps({'input': [sys.argv[1]]}).encode()))\n"
        "if r.status_code != 200: raise SystemExit(r.get_body())\n"
        "t2 = time.perf_counter()\n"
        "tokens = json.loads(r.get_body())['usage']['prompt_tokens']\n"
        "print(json.dumps({'import_s': t1 - t0, 'first_embedding_s': t2 - t0, 'tokens': tokens}))\n")
    env = clean_env()
    env["EMBEDDINGS_API_KEYS"] = "first-embedding-key"

    def runs(text: str, what: str) -> list[dict]:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", code, text], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            lines = res.stdout.strip().splitlines()
            if res.returncode or not lines:
                raise process_failed(f"cold_start: a fresh process ({sys.executable}) importing "
                                     f"function_app and embedding {what}", res.returncode,
                                     res.stderr)
            out.append({**json.loads(lines[-1]), "process_wall_s": wall})
        return out

    short, long = runs("hello world", "'hello world'"), runs(long_text, "the long input")
    result = {k: statistics.median(r[k] for r in short) for k in ("import_s", "first_embedding_s",
                                                                  "process_wall_s")}
    result["long_input_tokens"] = long[0]["tokens"]
    result["first_long_embedding_s"] = statistics.median(r["first_embedding_s"] for r in long)
    return result


def images(n: int, per_request: int, clients: int, rounds: int) -> dict:
    """Images/s end to end against decode + model in-process; without an image deployment or
    test photos, {"not_measured": why}, which the report prints (it was None, and the row, which
    has a target, left the table without a note)."""
    from embedding_core.registry import Registry
    from embedding_core.schema import ImageInput
    from embedding_core.settings import Settings

    reg = Registry.from_settings(Settings.from_env({}))
    dep = reg.default_for("image")
    photos = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
    if dep is None:
        return {"not_measured": "no image deployment in the registry"}
    if not photos:
        return {"not_measured": "no test photos (tests/data/images/*.jpg)"}
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
                 for _ in range(rounds)]  # interleaved, so both see the same machine
    finally:
        server.stop()
    inproc = statistics.median(p[0] for p in pairs)
    e2e = statistics.median(p[1] for p in pairs)
    return {"deployment": dep.name, "n": n, "per_request": per_request,
            "in_process_per_second": n / inproc, "end_to_end_per_second": n / e2e}


def reference_cold_and_rss(w_path: str) -> dict:
    def run(*args: str) -> dict:
        res = subprocess.run([str(TOOLS_PY), str(ROOT / "bench" / "reference.py"), *args,
                              *reference_threads()], capture_output=True, text=True)
        lines = res.stdout.strip().splitlines()
        if res.returncode or not lines:
            raise reference_failed(" ".join(args), res.returncode, res.stderr)
        return json.loads(lines[-1])

    cold = [run("--cold") for _ in range(3)]
    return {"cold_start": {k: statistics.median(c[k] for c in cold) for k in cold[0]},
            "peak_rss_mb": run(w_path, "--rss")["peak_rss_mb"]}


def package_size() -> dict:
    """Bytes of what ships: the app files (as .funcignore leaves them) and what requirements.txt
    pulls in on this Python, as installed in .venv: each requirement whose marker applies here
    (one for another Python or platform, or for an extra not asked for, is not looked for), with
    the extras asked for (PyJWT[crypto]). One that applies and is not installed fails the run:
    skipped, it left dependencies_mb low with no note."""
    import fnmatch
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    # "/build/" is anchored at the root, as in .gitignore: compared without its slashes.
    ignore = [ln.strip().strip("/") for ln in (ROOT / ".funcignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    app = 0
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/")
                                      or fnmatch.fnmatch(rel.split("/")[0], pat)
                                      for pat in ignore):
            app += path.stat().st_size

    def applies(req: Requirement, extra: str = "") -> bool:
        return req.marker is None or req.marker.evaluate({"extra": extra})

    deps, seen = 0, set()
    # A comment is "#" at the start or after white space, as pip reads it (a trailing one too).
    lines = [ln for ln in (re.sub(r"(^|\s)#.*", "", ln).strip()
                           for ln in (ROOT / "requirements.txt").read_text().splitlines())
             if ln and not ln.startswith("-")]
    todo = [(req, "requirements.txt") for req in map(Requirement, lines) if applies(req)]
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        extras = [x for x in ("", *sorted(req.extras)) if (name, x) not in seen]
        if not extras:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise RuntimeError(f"package size: {req} (required by {by}) applies on this Python "
                               f"but is not installed in {sys.prefix}") from None
        if "" in extras:                # its files once, whatever extras ask for more
            deps += sum((dist.locate_file(f).stat().st_size for f in dist.files or []
                         if dist.locate_file(f).is_file()), 0)
        seen.update((name, x) for x in extras)
        requires = [Requirement(r) for r in dist.requires or []]
        todo.extend((r, f"{name}[{x}]" if x else name) for x in extras for r in requires
                    if applies(r, x))
    return {"app_mb": app / 1e6, "dependencies_mb": deps / 1e6, "total_mb": (app + deps) / 1e6}


def steal_ticks() -> int | None:
    """CPU time the hypervisor gave to others (``steal`` in /proc/stat, USER_HZ ticks): on a
    shared VM, rounds with steal are slower for reasons outside the process."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def machine() -> dict:
    cpu, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    import onnxruntime

    # What decides the int8 kernels ONNX Runtime picks (VNNI: 32-bit dot products; without it
    # u8 x s8 pairs are summed in 16 bits, see docs/performance-model.md).
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    from embedding_core.settings import usable_cores
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable_cores(), "simd": simd,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


# -- report ---------------------------------------------------------------------------------------

def report(r: dict) -> str:
    rows = []
    t = r["throughput"]
    ref_short, ref_mixed = _get(t, "ref:short", "median"), _get(t, "ref:mixed", "median")
    lat = r["latency"]

    def row(name, value, unit, ref_value=None, target="", rounds=""):
        rat = ratio(value, ref_value)
        rows.append(f"| {name} | {value:,.1f} {unit} | "
                    + (f"{ref_value:,.1f} {unit}" if ref_value is not None else "–") + " | "
                    + (f"{rat:.2f}×{rounds}" if rat is not None else "–") + f" | {target} |")

    for i, d in enumerate(r["deployments"]):
        target = "≥ 3.0×" if i == 0 else ""
        for fmt in ("float", "base64"):
            row(f"`{d}` short sentences/s, end to end, {fmt}", t[f"{d}:short_{fmt}"]["median"],
                "/s", ref_short, target, per_round(t, f"{d}:short_{fmt}", "ref:short"))
        row(f"`{d}` mixed lengths (≤ 256 tokens)/s, end to end, float",
            t[f"{d}:mixed_float"]["median"], "/s", ref_mixed, target,
            per_round(t, f"{d}:mixed_float", "ref:mixed"))
    d0 = r["deployments"][0]
    row(f"`{d0}` short sentences/s, in-process engine (no queue, no HTTP; one thread per worker)",
        t["engine_short"]["median"], "/s", ref_short)
    singles = t[f"{d0}:singles_8_clients"]["median"]
    one = t.get(f"{d0}:one_core_short_base64")
    if one:
        two = t[f"{d0}:short_base64"]["median"]
        rows.append(f"| `{d0}` short sentences/s on one core, base64 (server and clients pinned "
                    f"to one core: a 2048 MB Flex instance's CPU) | {one['median']:,.1f} /s | "
                    f"{two:,.1f} /s on all {r['machine'].get('usable_cores', '?')} cores | "
                    f"{100 * one['median'] / two:.0f} %"
                    f"{per_round(t, f'{d0}:one_core_short_base64', f'{d0}:short_base64', True)} | |")
    batched = t[f"{d0}:short_float"]["median"]
    rows.append(f"| `{d0}` 8 clients, one sentence per request | {singles:,.1f} /s | "
                f"{batched:,.1f} /s batched (32/request) | {100 * singles / batched:.0f} %"
                f"{per_round(t, f'{d0}:singles_8_clients', f'{d0}:short_float', True)} | "
                "≥ 70 % of batched |")
    row(f"`{d0}` single input p50, end to end (one client)", lat["p50_ms"], "ms",
        lat.get("ref_p50_ms"))
    row(f"`{d0}` single input p95, end to end (one client)", lat["p95_ms"], "ms",
        lat.get("ref_p95_ms"))
    f = r["fairness"]
    big_run = (f"{f['big_seconds']:.1f} s" if f.get("big_seconds") is not None else
               f"FAILED: {f.get('big_error')}")
    p50 = f"{f['p50_ms']:,.0f} / {f['p95_ms']:,.0f} ms" if f.get("p50_ms") is not None else "–"
    statuses = ", ".join(f"{k}: {v}" for k, v in (f.get("statuses") or {}).items() if k != "200")
    # No probe while it ran (it ended, or failed, within the 0.3 s before the first): nothing
    # was measured, which "0 of 0 refused" beside "none refused" read as met.
    probed = (f"{p50}, {f['refused']} of {f['probes']} refused"
              f"{f' ({statuses})' if statuses else ''}" if f["probes"] else
              "NOT MEASURED: no probe went out while it ran")
    rows.append(f"| one-sentence requests while a {f['big_inputs']} × 256-token request runs "
                f"({big_run}): p50 / p95, refused (any answer but 200) | {probed} | – | – | "
                "p50 ≤ 500 ms, none refused |")
    big = r.get("largest")      # None in a smoke run
    for d, b in ([(r["deployments"][0], big), *(big.get("others") or {}).items()] if big else []):
        rows.append(f"| `{d}` largest request the limits allow ({b['inputs']:,} inputs of up to "
                    f"256 tokens: {b['tokens']:,} tokens) | {b['seconds']:.1f} s | – | – | ≤ 60 s |")
        row(f"`{d}` peak RSS, largest request", b["peak_rss_mb"], "MiB",
            _get(r, "reference", "peak_rss_mb"), "≤ 700 MB (667 MiB)")
    q = r["quality"]
    for i, d in enumerate(r["deployments"]):
        e = q.get(d)
        if e is None:           # a smoke run measures the default deployment's only
            continue
        if "min" in e:
            target = "min ≥ 0.995, median ≥ 0.999" if i == 0 else "min ≥ 0.999"
            rows.append(f"| `{d}` cosine to sentence-transformers ({e['n']} held-out texts) | min "
                        f"{e['min']:.5f}, median {e['median']:.5f} | 1 | – | {target} |")
        rows.append(f"| `{d}` retrieval rank-1 ({e['of']} query/document pairs) | {e['rank1']} | "
                    f"{q.get('reference_rank1', '–')} | – | equal to the exact model |")
        h, rh = e["docstrings"], q.get("reference_docstrings")
        detail = (f"; first document as the reference's for {h['first_as_reference']}, only the "
                  f"reference right on {h['only_reference_right']}, only this on "
                  f"{h['only_this_right']}" if "first_as_reference" in h else "")
        rows.append(f"| `{d}` retrieval rank-1, {h['of']} held-out docstrings (first sentence → "
                    f"the rest) | {h['rank1']} (MRR {h['mrr']:.4f}{detail}) | "
                    + (f"{rh['rank1']} (MRR {rh['mrr']:.4f})" if rh else "–")
                    + " | – | equal to the exact model |")
        bi = e["batch_invariance"]
        rows.append(f"| `{d}` alone vs inside mixed batches (100 texts) | float max "
                    f"{bi['float_max_abs']:.1e}; int8/uint8/binary/ubinary rows differing: "
                    + "/".join(str(bi["quantised_rows_differing"][k])
                               for k in ("int8", "uint8", "binary", "ubinary"))
                    + " | – | – | ≤ 1e-5; 0 |")
    cs = r["cold_start"]
    row("import function_app", 1000 * cs["import_s"], "ms",
        _scale(_get(r, "reference", "cold_start", "import_s")), "≤ 300 ms")
    row("first embedding in a fresh process", 1000 * cs["first_embedding_s"], "ms",
        _scale(_get(r, "reference", "cold_start", "first_embedding_s")), "≤ 1500 ms")
    if "first_long_embedding_s" in cs:
        row(f"first embedding of a {cs['long_input_tokens']}-token input in a fresh process",
            1000 * cs["first_long_embedding_s"], "ms", None, "≤ 1500 ms")
    im = r.get("images") or {"not_measured": "not in the results"}
    name = "images/s end to end (224-px JPEG; reference column: decode+model in-process)"
    if "not_measured" in im:    # as the fairness row: said, not left out
        rows.append(f"| {name} | NOT MEASURED: {im['not_measured']} | – | – | ≥ 0.85× |")
    else:
        row(name, im["end_to_end_per_second"], "/s", im["in_process_per_second"], "≥ 0.85×")
    for extra in r.get("extras", []):
        rows.append(extra)
    ps = r["package"]
    rows.append(f"| package size: app files / runtime dependencies | {ps['app_mb']:.1f} MB / "
                f"{ps['dependencies_mb']:.1f} MB | – | – | |")
    if r.get("cost"):
        c = r["cost"]
        rows.append(f"| cost per 1M embeddings, Flex Consumption on demand, `{c['deployment']}` | "
                    f"${c['usd_per_million']:.3f} | – | – | {c['basis']} |")
    m = r["machine"]
    ref = r.get("reference") or {}
    head = "| measure | service | reference | ratio | target |\n|---|---|---|---|---|"
    return (f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m.get('simd') or ['?'])}), "
            f"Python {m['python']}, onnxruntime "
            f"{m['onnxruntime']}. Reference: sentence-transformers all-MiniLM-L6-v2 fp32, torch "
            f"{ref.get('torch', 'not run')}, {ref.get('threads', '-')} threads, "
            f"encode(batch_size=32), in-process. Throughputs: medians of {r['rounds']} "
            f"interleaved rounds, {r['clients']} clients.{_steal_note(r)} Run {r['date']}.\n\n"
            + head + "\n"
            + "\n".join(rows))


def per_round(t: dict, key: str, ref_key: str, percent: bool = False) -> str:
    """The range and the median of key / ref_key over the interleaved rounds, as " (a-b× per
    round, median m×)" (or percent): the rounds are minutes apart on a VM whose speed varies;
    the ratio of the medians, the headline, hides that, and the median of the paired per-round
    ratios can fall on the other side of a target. "" without two rounds of each."""
    a, b = _get(t, key, "rounds"), _get(t, ref_key, "rounds")
    if not a or not b or len(a) != len(b) or len(a) < 2 or not all(b):
        return ""
    rs = [x / y for x, y in zip(a, b)]
    m = statistics.median(rs)
    if percent:
        return f" ({100 * min(rs):.0f}-{100 * max(rs):.0f} % per round, median {100 * m:.0f} %)"
    return f" ({min(rs):.2f}-{max(rs):.2f}× per round, median {m:.2f}×)"


def _steal_note(r: dict) -> str:
    rounds = _get(r, "throughput", "steal_ticks", "rounds")
    if not rounds:
        return ""
    return (" Hypervisor steal per round (/proc/stat ticks; 0 = the VM had its cores): "
            + ", ".join(str(int(t)) for t in rounds) + ".")


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
# CPU cores of a Flex Consumption instance by its memory (MB): flex-consumption-plan.md,
# "Instance sizes" ("typical allocations"). CPU is in proportion to memory, so the cost per
# embedding is the same at every size if throughput is in proportion to cores.
FLEX_CORES = {512: 0.25, 2048: 1.0, 4096: 2.0}


def cost(r: dict, memory_mb: int = 2048, per_request: int = 32) -> dict | None:
    """USD per 1M embeddings on a Flex instance of ``memory_mb``, at the default deployment's
    end-to-end throughput on one core of this machine (measured with the server and its
    clients pinned to one core when the run has it; else this machine's rate per core, which
    assumes the run kept every core busy: true of the 2-core machines measured) times the
    instance's cores."""
    d = r["deployments"][0]
    rate = r["throughput"][f"{d}:short_base64"]["median"]
    cores = r["machine"].get("usable_cores") or r["machine"]["cores"]
    one = r["throughput"].get(f"{d}:one_core_short_base64")
    per_core = one["median"] if one else rate / cores
    instance_rate = per_core * FLEX_CORES[memory_mb]
    seconds = 1e6 / instance_rate
    usd = seconds * memory_mb / 1024 * FLEX_GB_SECOND_USD + (1e6 / per_request) / 1e6 * \
        FLEX_PER_MILLION_EXECUTIONS_USD
    how = (f"{per_core:,.0f}/s measured on one core (server and clients pinned to it)" if one
           else f"this machine's {rate:,.0f}/s over its {cores:g} cores")
    return {"deployment": d, "usd_per_million": usd, "sentences_per_second": rate,
            "instance_sentences_per_second": instance_rate,
            "basis": f"{memory_mb} MB instance ({FLEX_CORES[memory_mb]:g} core): {how}, scaled "
                     f"to the instance's cores; requests of {per_request} short sentences, "
                     f"${FLEX_GB_SECOND_USD}/GB-s + ${FLEX_PER_MILLION_EXECUTIONS_USD}/1M "
                     "executions, before free grants"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny workloads, no reference")
    run_dir = ROOT / "bench" / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    parser.add_argument("--out", default=str(run_dir / "results.json"),
                            help="default: a new directory under bench/runs/ (git-ignored)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    smoke = args.smoke
    rounds = 1 if smoke else args.rounds
    sizes = (64, 32, 40) if smoke else (1024, 256, 1000)
    w = workloads.build(*sizes)
    w["largest"] = w["longest"][:largest_inputs()]     # the reference's peak RSS: the same request
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(w, fh)
        w_path = fh.name
    deployments = text_deployments()
    ref = None if smoke or not TOOLS_PY.exists() else Reference(w_path)
    results: dict = {"machine": machine(), "smoke": smoke, "rounds": rounds,
                     "clients": args.clients, "deployments": deployments,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if ref is not None:
        results["reference"] = ref.ask(op="info")
    steps = [
        ("throughput", lambda: throughput_rounds(w, deployments, ref, args.clients, rounds)),
        ("latency", lambda: latency(w, deployments[0], ref, 10 if smoke else 100)),
        ("quality", lambda: quality(w, deployments[:1] if smoke else deployments, ref)),
        # 64 inputs in a smoke run: long enough (~0.7 s on 2 cores) for probes to go out
        ("fairness", lambda: fairness(w, 64 if smoke else 256, 5 if smoke else 40)),
        ("largest", lambda: None if smoke else largest_request(w, text_deployments()[1:])),
        # 120 words of a long text: 176 tokens, a long input on CPUs with AMX
        ("cold_start", lambda: cold_start(1 if smoke else 5,
                                          " ".join(w["longest"][0].split()[:120]))),
        ("images", lambda: images(16 if smoke else 96, 8, args.clients, min(rounds, 3))),
        ("package", package_size),
    ]
    try:
        for name, fn in steps:
            t0 = time.perf_counter()
            results[name] = fn()
            print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        if ref is not None:
            ref.stop()
    if ref is not None:
        results["reference"].update(reference_cold_and_rss(w_path))
    os.unlink(w_path)
    # The smoke run reports too (its figures mean nothing): CI then runs the report and the cost.
    results["cost"] = cost(results)
    text = report(results)
    results["table_markdown"] = text
    if smoke:
        print(json.dumps({k: v for k, v in results.items()
                          if k not in ("machine", "table_markdown")}, indent=1, default=str)[:4000])
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str if smoke else None) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
