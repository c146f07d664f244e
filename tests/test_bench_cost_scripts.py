"""bench/singles_cost.py, bench/image_cost.py and bench/real_worker.py (not part of `make bench`),
whose figures go into docs/inference-queue.md, docs/images.md and docs/benchmarks.md. As in
tests/test_bench_side_runs.py: stand-ins replace the server, the app and the clocks, so nothing is
measured; the tests check what is sent, counted, divided and reported (h_mut9's sweep: 50
mutants of the three scripts, none caught before, since no test loaded them)."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
import image_cost  # noqa: E402
import real_worker  # noqa: E402
import singles_cost  # noqa: E402


class _Clock:
    """A fake clock: .t advances only when a stand-in says the work cost something."""
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _fake_time(**clocks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{"strftime": time.strftime, "gmtime": time.gmtime,
                                    "sleep": time.sleep, "perf_counter": time.perf_counter,
                                    **clocks})


# -- bench/singles_cost.py --------------------------------------------------------------------------

def test_singles_cost_loads_send_what_their_names_say_and_count_sentences(monkeypatch):
    short = [f"s{i}" for i in range(70)]
    calls = []

    def run_clients(server, path, bodies, clients, send=None):
        calls.append((path, list(bodies), clients, send))
        return 1.0
    monkeypatch.setattr(singles_cost.bench, "run_clients", run_clients)
    loads = singles_cost.http_loads(short, 123)
    assert list(loads) == ["8 clients, one sentence per request",
                           "2 clients, 32 sentences per request", "8 clients, GET /health"]
    for name, (n, run) in loads.items():
        run("server")
    (p1, b1, c1, s1), (p2, b2, c2, s2), (p3, b3, c3, s3) = calls
    single_n, batched_n, health_n = (loads[k][0] for k in loads)
    assert (p1, c1, s1) == ("/embeddings", 8, None)
    assert b1 == [{"input": [t]} for t in short] and single_n == len(b1) == 70
    assert (p2, c2, s2) == ("/embeddings", 2, None)
    assert all(b == {"input": b["input"], "truncate": "END"} for b in b2)
    assert [len(b["input"]) for b in b2] == [32, 32, 6] * 3      # the set three times over
    assert [t for b in b2 for t in b["input"]] == short * 3
    assert batched_n == sum(len(b["input"]) for b in b2)         # CPU per sentence
    assert (p3, c3) == ("/health", 8) and b3 == [None] * 123 and health_n == 123


def test_singles_cost_health_sends_get_health_and_refuses_an_error():
    class Conn:
        def __init__(self, status):
            self.status, self.sent = status, []

        def request(self, method, path, *a, **k):
            self.sent.append((method, path))

        def getresponse(self):
            return types.SimpleNamespace(status=self.status, read=lambda: b"{}")
    sent = {}

    def run_clients(server, path, bodies, clients, send):
        sent.update(path=path, n=len(bodies), clients=clients)
        for status in (200, 404, 503):
            conn = Conn(status)
            if status == 200:
                send(conn, None)
                assert conn.sent == [("GET", "/health")]
            else:
                with pytest.raises(RuntimeError):
                    send(conn, None)
        return 2.0
    import bench
    orig = bench.run_clients
    bench.run_clients = run_clients
    try:
        assert singles_cost.health("server", 5, 8) == 2.0
    finally:
        bench.run_clients = orig
    assert sent == {"path": "/health", "n": 5, "clients": 8}


def test_singles_cost_process_cpu_is_utime_plus_stime_of_that_process():
    t_end = time.process_time() + 0.05
    while time.process_time() < t_end:
        pass
    tick = 1 / singles_cost.TICK
    before = os.times()
    cpu = singles_cost.process_cpu(os.getpid())
    after = os.times()
    assert before.user + before.system - tick <= cpu <= after.user + after.system + tick
    me = threading.get_native_id()
    assert singles_cost.thread_cpu(os.getpid(), me) <= cpu + tick
    assert singles_cost.thread_cpu(os.getpid(), 2**22 + 12345) == 0.0   # no such thread


def test_singles_cost_main_divides_by_the_load_size_interleaves_and_takes_medians(
        monkeypatch, tmp_path):
    server_cpu, client_cpu = _Clock(), _Clock()
    order, posted = [], []
    per_round = [1.0, 2.0, 3.0, 10.0]          # ms per unit of load, by round: median 2.5
    state = {"round": -1}

    def load(name, n, server_ms, client_ms):
        def run(server):
            if name.startswith("8 clients, one"):
                state["round"] += 1
            order.append(name)
            k = per_round[state["round"]]
            server_cpu.t += n * server_ms * k / 1e3
            client_cpu.t += n * client_ms * k / 1e3
            return n / 100.0                  # 100 per second
        return n, run

    def http_loads(short, health_requests):
        assert health_requests == 3000
        return {"a": load("8 clients, one", 50, 4.0, 1.0), "b": load("b", 300, 2.0, 0.5),
                "c": load("c", 3000, 0.4, 0.2)}

    class Server:
        proc = types.SimpleNamespace(pid=424242)

        def conn(self):
            return types.SimpleNamespace(close=lambda: None)

        def post(self, conn, path, body):
            posted.append((path, len(body["input"])))

        def stop(self):
            posted.append("stopped")
    monkeypatch.setattr(singles_cost, "http_loads", http_loads)
    monkeypatch.setattr(singles_cost.bench, "Server", Server)
    steal = iter(range(7, 10**6, 3))
    monkeypatch.setattr(singles_cost.bench, "steal_ticks", lambda: next(steal))
    monkeypatch.setattr(singles_cost.bench, "machine", lambda: {"cpu": "stand-in"})
    monkeypatch.setattr(singles_cost.workloads, "build",
                        lambda *a: {"short": [f"s{i}" for i in range(100)]})
    monkeypatch.setattr(singles_cost, "process_cpu",
                        lambda pid: server_cpu() if pid == 424242 else pytest.fail(pid))
    monkeypatch.setattr(singles_cost, "time", _fake_time(process_time=client_cpu))
    out = tmp_path / "o.json"
    monkeypatch.setattr(sys, "argv", ["singles_cost.py", "--rounds", "4", "--out", str(out)])
    singles_cost.main()
    assert posted == [("/embeddings", 64), "stopped"]            # the model loaded first
    assert order == ["8 clients, one", "b", "c"] * 4            # interleaved rounds
    r = json.loads(out.read_text())
    assert {k: len(v) for k, v in r["rounds"].items()} == {"a": 4, "b": 4, "c": 4}
    for name, server_ms, client_ms in (("a", 4.0, 1.0), ("b", 2.0, 0.5), ("c", 0.4, 0.2)):
        rows = r["rounds"][name]
        assert [x["server_ms"] for x in rows] == pytest.approx([server_ms * k for k in per_round])
        assert [x["client_ms"] for x in rows] == pytest.approx([client_ms * k for k in per_round])
        assert [x["per_s"] for x in rows] == pytest.approx([100.0] * 4)
        assert [x["steal_ticks"] for x in rows] == [3] * 4          # ticks during the load
        assert r["medians"][name] == pytest.approx(
            {"per_s": 100.0, "server_ms": 2.5 * server_ms, "client_ms": 2.5 * client_ms})


def test_singles_cost_in_process_splits_cpu_per_sentence_by_thread(monkeypatch):
    import onnxruntime as ort

    from embedding_core import inference_queue, service
    # The run counts the process's inference-worker threads (in a real run, a fresh process):
    # those of services earlier tests built, which live as long as the process, are stopped,
    # and the process-wide service with them is dropped (the next one is built anew).
    inference_queue._stop_all()
    service.reset_service()
    proc, workers_cpu, thread_clock = _Clock(), _Clock(), _Clock()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="inference-worker-0", daemon=True)
    other = threading.Thread(target=stop.wait, name="request-thread", daemon=True)
    sent = []

    def fake_run(self, *a, **k):            # one ONNX Runtime run: 1 ms of thread CPU
        thread_clock.t += 1e-3
        return "out"
    monkeypatch.setattr(ort.InferenceSession, "run", fake_run)

    def run_clients(bodies, clients):
        sent.append((len(bodies), clients, [len(b["input"]) for b in bodies]))
        if len(sent) == 1:
            worker.start()
            other.start()
            return 1.0
        sentences = sum(len(b["input"]) for b in bodies)
        for b in bodies:                                # one run a request
            assert ort.InferenceSession.run(None) == "out"
        workers_cpu.t += sentences * 3e-3               # 3 ms a sentence in the workers
        proc.t += sentences * 5e-3                      # 5 ms a sentence in all
        return sentences / 200.0
    monkeypatch.setitem(sys.modules, "one_core",
                        types.SimpleNamespace(in_process_clients=lambda: run_clients))
    monkeypatch.setattr(singles_cost, "process_cpu", lambda pid: proc())
    monkeypatch.setattr(singles_cost, "thread_cpu",
                        lambda pid, tid: workers_cpu() if tid == worker.native_id else 0.0)
    monkeypatch.setattr(singles_cost, "time", _fake_time(thread_time=thread_clock))
    monkeypatch.setattr(singles_cost.bench, "machine", lambda: {})
    short = [f"s{i}" for i in range(64)]
    try:
        r = singles_cost.in_process(short, 2)
    finally:
        stop.set()
    assert ort.InferenceSession.run is fake_run                   # put back
    assert sent[0] == (1, 1, [64])
    assert sent[1:] == [(64, 8, [1] * 64), (6, 2, [32, 32] * 3)] * 2   # interleaved
    assert r["workers"] == 1 and set(r["rounds"]) == set(r["medians"])
    single = r["medians"]["8 clients, one sentence per request"]
    batched = r["medians"]["2 clients, 32 sentences per request"]
    assert single == pytest.approx({"per_s": 200.0, "process_ms": 5.0, "workers_ms": 3.0,
                                    "onnxruntime_runs_ms": 1.0, "rest_ms": 2.0,
                                    "sentences_per_run": 1.0})
    assert batched == pytest.approx({"per_s": 200.0, "process_ms": 5.0, "workers_ms": 3.0,
                                     "onnxruntime_runs_ms": 6 / 192, "rest_ms": 2.0,
                                     "sentences_per_run": 32.0})
    assert all(len(v) == 2 for v in r["rounds"].values())


def test_singles_cost_in_process_fails_without_an_inference_worker_thread(monkeypatch):
    """No thread named inference-worker* (the queue's threads renamed, or none started): the
    workers' CPU read 0 and all of it was counted as the rest, with 'workers: 0' in the JSON."""
    import onnxruntime as ort

    from embedding_core import inference_queue, service
    inference_queue._stop_all()                # the workers of services earlier tests built
    service.reset_service()
    for t in threading.enumerate():
        if t.name.startswith("inference-worker"):
            t.join(10)
    plain_run = ort.InferenceSession.run
    monkeypatch.setitem(sys.modules, "one_core",
                        types.SimpleNamespace(in_process_clients=lambda: lambda b, c: 1.0))
    monkeypatch.setattr(singles_cost.bench, "machine", lambda: {})
    with pytest.raises(RuntimeError, match=r"no thread named inference-worker\* after"):
        singles_cost.in_process([f"s{i}" for i in range(64)], 1)
    assert ort.InferenceSession.run is plain_run                  # put back


# -- bench/image_cost.py ----------------------------------------------------------------------------

class _FakeApp:
    """function_app.image_embeddings on fake clocks: each image costs ``cpu_s`` of process CPU and
    ``wall_s`` of wall time, of which ``inference_s`` is the model's (the x-inference-time header)."""
    def __init__(self, wall, cpu, cpu_s=0.03, wall_s=0.05, inference_s=0.02, status=200):
        self.wall, self.cpu, self.calls = wall, cpu, []
        self.cpu_s, self.wall_s, self.inference_s, self.status = cpu_s, wall_s, inference_s, status
        self.scale = iter([1, 1, 1, 10] * 10)   # a warm-up, then every third run ten times dearer

    def image_embeddings(self, req):
        body = json.loads(req.get_body())
        self.calls.append((req, body))
        n, k = len(body["input"]), next(self.scale)
        self.cpu.t += n * self.cpu_s * k
        self.wall.t += n * self.wall_s * k
        return types.SimpleNamespace(
            status_code=self.status, get_body=lambda: b"{}",
            headers={"x-inference-time": f"{n * self.inference_s * k * 1e3:.1f}"})


def test_image_cost_main_reports_cpu_per_image_and_the_wall_split_of_a_request(
        monkeypatch, tmp_path):
    wall, cpu = _Clock(), _Clock()
    app = _FakeApp(wall, cpu)
    monkeypatch.setitem(sys.modules, "function_app", app)
    monkeypatch.setattr(image_cost, "time", _fake_time(perf_counter=wall, process_time=cpu))
    monkeypatch.setattr(image_cost, "CASES", (("JPEG a", "JPEG", 40, 30, 4),
                                              ("PNG b", "PNG", 20, 10, 2)))
    made = []

    def photos(fmt, w, h, n):
        made.append((fmt, w, h, n))
        return [f"data:image/{fmt.lower()};base64," + "QUJD" * (i + 1) for i in range(n)]
    monkeypatch.setattr(image_cost, "photos", photos)
    import bench
    monkeypatch.setattr(bench, "machine", lambda: {})
    monkeypatch.setenv("EMBEDDINGS_API_KEYS", "k-0000000000000001,k2")
    out = tmp_path / "o.json"
    monkeypatch.setattr(sys, "argv", ["image_cost.py", "--repeats", "3", "--out", str(out)])
    image_cost.main()
    assert made == [("JPEG", 40, 30, 4), ("PNG", 20, 10, 2)]
    assert len(app.calls) == 2 * (1 + 3)                         # one warm-up a case
    req, body = app.calls[0]
    assert req.method == "POST" and req.headers["api-key"] == "k-0000000000000001"
    assert req.params["api-version"] == "2024-05-01-preview"
    assert body["encoding_format"] == "base64" and len(body["input"]) == 4
    cases = json.loads(out.read_text())["cases"]
    for name, n in (("JPEG a", 4), ("PNG b", 2)):
        c = cases[name]
        assert c["images_per_request"] == n and len(c["runs"]) == 3
        assert c["medians"] == pytest.approx({"cpu_ms_per_image": 30.0, "wall_ms": 50.0 * n,
                                              "before_inference_ms": 30.0 * n,
                                              "inference_ms": 20.0 * n})
        urls = photos(*(("JPEG", 40, 30, 4) if n == 4 else ("PNG", 20, 10, 2)))
        assert c["mean_file_bytes"] == int(sum(len(u) for u in urls) * 3 / 4 / n)
        assert c["body_bytes"] == len(json.dumps(body if n == 4 else app.calls[4][1]).encode())


def test_image_cost_main_refuses_an_error_answer(monkeypatch):
    wall, cpu = _Clock(), _Clock()
    app = _FakeApp(wall, cpu, status=413)
    monkeypatch.setitem(sys.modules, "function_app", app)
    monkeypatch.setattr(image_cost, "time", _fake_time(perf_counter=wall, process_time=cpu))
    monkeypatch.setattr(image_cost, "CASES", (("PNG b", "PNG", 20, 10, 2),))
    monkeypatch.setattr(image_cost, "photos", lambda *a: ["data:image/png;base64,QUJD"] * 2)
    monkeypatch.setattr(sys, "argv", ["image_cost.py", "--repeats", "2"])
    with pytest.raises(RuntimeError, match="413"):
        image_cost.main()


@pytest.mark.parametrize("interlaced", [False, True])
def test_image_cost_png_is_a_paeth_filtered_png_of_that_size(interlaced):
    """Every row of every Adam7 pass (or of the image) is there, Paeth-filtered (filter 4), and
    Pillow decodes it at that size."""
    import struct
    import zlib

    from PIL import Image
    w, h = 13, 11
    pixel = bytes([10, 0, 200, 0, 30, 0, 128, 0])
    data = image_cost.png(w, h, 16, 6, pixel, interlaced)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">IIBBBBB", data[16:29]) == (w, h, 16, 6, 0, 0, int(interlaced))
    (length,) = struct.unpack(">I", data[33:37])
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41:41 + length])
    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
               (1, 0, 2, 2), (0, 1, 1, 2)] if interlaced else [(0, 0, 1, 1)])
    rows = []
    for x0, y0, dx, dy in passes:
        cols = len(range(x0, w, dx))
        rows += [1 + 8 * cols] * (len(range(y0, h, dy)) if cols else 0)
    assert len(raw) == sum(rows)
    at = 0
    for n in rows:
        assert raw[at] == 4 and raw[at + 1:at + n] == pixel * ((n - 1) // 8)
        at += n
    im = Image.open(io.BytesIO(data))
    assert im.size == (w, h) and bool(im.info.get("interlace")) is interlaced
    im.load()


def test_image_cost_costliest_names_the_dearest_kind_by_its_cheaper_run(monkeypatch):
    from embedding_core import images
    clock = _Clock()
    costs = {}

    def decode(url, settings, index):
        data = base64.b64decode(url.split(",", 1)[1])
        if data not in costs:
            costs[data] = [0.5, 0.1, 0.2, 0.3, 0.4][len(costs)]
        k = costs[data]
        clock.t += k * (1 + decode.calls.count(data))         # the second run dearer
        decode.calls.append(data)
    decode.calls = []
    monkeypatch.setattr(images, "image_to_pixel_values", decode)
    monkeypatch.setattr(image_cost, "time", _fake_time(process_time=clock))
    table, url = image_cost.costliest(16, 10)
    cpu = {k: v["cpu_s"] for k, v in table["kinds"].items()}
    assert len(decode.calls) == 10                                  # each twice
    first = list(cpu)[0]
    assert cpu[first] == pytest.approx(0.5)                           # the cheaper of two
    assert table["dearest"] == first
    assert base64.b64decode(url.split(",", 1)[1]) == decode.calls[0]


class _Req:
    """What image_cost builds its requests with: a body, read back by the stand-in app."""
    def __init__(self, body):
        self.body = body

    def get_body(self):
        return self.body


def test_image_cost_largest_counts_the_pictures_and_as_many_as_fit(monkeypatch):
    from embedding_core.settings import Settings
    url = "data:image/png;base64," + "A" * 1000
    monkeypatch.setattr(image_cost, "costliest", lambda: ({"kinds": {}, "dearest": "x"}, url))
    release = threading.Event()
    calls = []

    class App:
        def image_embeddings(self, req):
            n = len(json.loads(req.get_body())["input"])
            big = n > 1 and not any(c > 1 for c in calls)
            calls.append(n)
            if big:                                  # the big one: wait for a probe
                release.wait(10)
            elif n == 1 and any(c > 1 for c in calls):
                release.set()
            return types.SimpleNamespace(status_code=200 if n < 50 else 413)
    monkeypatch.setitem(sys.modules, "function_app", App())
    monkeypatch.setenv("EMBEDDINGS_MAX_REQUEST_PIXELS", str(3 * 8000 * 5000 + 5))
    s = Settings.from_env(os.environ)
    clock = _Clock()
    real_app = sys.modules["function_app"]

    class TimedApp:                                  # a one-image request: 5 ms on the clock
        def image_embeddings(self, req):
            if len(json.loads(req.get_body())["input"]) == 1:
                clock.t += 0.005
            return real_app.image_embeddings(req)

    def sleep(s):
        clock.t += s
        time.sleep(0.001)
    monkeypatch.setitem(sys.modules, "function_app", TimedApp())
    monkeypatch.setattr(image_cost, "time", _fake_time(perf_counter=clock, process_time=clock))
    monkeypatch.setattr(bench, "time", _fake_time(sleep=sleep))       # bench.while_running's
    r = image_cost.largest(_Req, probe_every_s=0.01)
    assert r["one_image_alone_p50_ms"] == pytest.approx(5.0)
    assert r["one_image_during"]["p50_ms"] == pytest.approx(5.0)    # not the sleep before it
    fit = min(s.max_image_inputs, (s.max_image_body_bytes - 64) // (len(url) + 16))
    assert r["images"] == 3 == [c for c in calls if c > 1][0] and r["status"] == 200
    assert calls[:11] == [1] * 11                                   # the probe alone
    assert r["one_image_during"]["n"] >= 1 and r["one_image_during"]["statuses"] == [200]
    assert r["as_many_as_fit"]["images"] == fit == calls[-1]
    assert r["as_many_as_fit"]["status"] == (200 if fit < 50 else 413)
    assert len(json.dumps({"input": [{"image": url}] * fit})) <= s.max_image_body_bytes


@pytest.mark.parametrize("refused", ["big", "alone"])
def test_image_cost_largest_refuses_a_refused_request(monkeypatch, refused):
    """The largest request answered 413/429 (or the one-image request alone answered 401): the
    wall time, CPU and peak RSS were reported as those of the largest request served."""
    url = "data:image/png;base64," + "A" * 100
    monkeypatch.setattr(image_cost, "costliest", lambda: ({"kinds": {}, "dearest": "x"}, url))

    class App:
        def image_embeddings(self, req):
            n = len(json.loads(req.get_body())["input"])
            if refused == "big" and n > 1:
                time.sleep(0.05)
                return types.SimpleNamespace(status_code=429)
            return types.SimpleNamespace(status_code=401 if refused == "alone" else 200)
    monkeypatch.setitem(sys.modules, "function_app", App())
    with pytest.raises(RuntimeError, match="429" if refused == "big" else "alone: 401"):
        image_cost.largest(_Req, images=2, probe_every_s=0.01)


def test_image_cost_probed_times_the_small_request_alone_and_during_the_large_one(monkeypatch):
    clock = _Clock()
    busy = threading.Event()
    probes = []

    class App:
        def image_embeddings(self, req):
            n = len(json.loads(req.get_body())["input"])
            if n > 1:                         # the large one: runs until three probes are done
                busy.set()
                deadline = time.monotonic() + 10
                while len(probes) < 3 and time.monotonic() < deadline:
                    time.sleep(0.001)
                busy.clear()
                return types.SimpleNamespace(status_code=200)
            if busy.is_set():
                probes.append(1)
            clock.t += 0.05 if busy.is_set() else 0.005       # 50 ms meanwhile, 5 ms alone
            return types.SimpleNamespace(status_code=200)
    monkeypatch.setitem(sys.modules, "function_app", App())
    monkeypatch.setattr(image_cost, "time", _fake_time(perf_counter=clock))
    big = json.dumps({"input": [{"image": "x"}] * 4}).encode()
    r = image_cost.probed(_Req, big, 1, every_s=0.001)
    assert r["alone_p50_ms"] == 5.0 and r["n"] >= 3
    assert r["p50_ms"] == 50.0 and r["max_ms"] >= 50.0


def test_image_cost_probed_refuses_a_failed_probe(monkeypatch):
    done = threading.Event()

    class App:
        def image_embeddings(self, req):
            n = len(json.loads(req.get_body())["input"])
            if n > 1:
                done.wait(5)
                return types.SimpleNamespace(status_code=200)
            if len(App.calls) >= 11:          # after the 11 timed alone: a probe fails
                done.set()
                App.calls.append(n)
                return types.SimpleNamespace(status_code=503)
            App.calls.append(n)
            return types.SimpleNamespace(status_code=200)
    App.calls = []
    monkeypatch.setitem(sys.modules, "function_app", App())
    with pytest.raises(RuntimeError, match="probe failed"):
        image_cost.probed(_Req, json.dumps({"input": [{}, {}]}).encode(), 1, every_s=0.001)
    done.set()


def test_image_cost_probed_refuses_a_refused_large_request(monkeypatch):
    """The large request answered 429 (or 413) while probed: its statuses were never read, and
    the probes' times, of no wait for its decoding, were reported as the wait."""
    class App:
        def image_embeddings(self, req):
            if len(json.loads(req.get_body())["input"]) > 1:
                time.sleep(0.05)
                return types.SimpleNamespace(status_code=429)
            return types.SimpleNamespace(status_code=200)
    monkeypatch.setitem(sys.modules, "function_app", App())
    with pytest.raises(RuntimeError, match="large request probed was answered 429 "
                                           r"\(2 of 2\)"):
        image_cost.probed(_Req, json.dumps({"input": [{}, {}]}).encode(), 2, every_s=0.001)


def _image_cost_probed_run(which: str, n: int) -> dict:
    """image_cost.largest's or probed's run, its large request of ``n`` images: the figures of
    the one-image requests sent meanwhile."""
    if which == "largest":
        return image_cost.largest(_Req, images=n, probe_every_s=0.05)["one_image_during"]
    return image_cost.probed(_Req, json.dumps({"input": [{}] * n}).encode(), 1, every_s=0.05)


@pytest.mark.parametrize("which", ["largest", "probed"])
def test_image_cost_counts_only_probes_sent_while_the_large_request_runs(monkeypatch, which):
    """The large request ends in the sleep after the first probe: the next probe, sent after
    that sleep, timed no wait and was counted as timed during it (bench.fairness's rule: the
    request is looked at just before each probe)."""
    url = "data:image/png;base64," + "A" * 100
    monkeypatch.setattr(image_cost, "costliest", lambda: ({"kinds": {}, "dearest": "x"}, url))
    release, during = threading.Event(), []

    class App:
        large = None

        def image_embeddings(self, req):
            if len(json.loads(req.get_body())["input"]) > 1:
                if App.large is None:              # the large one (not largest's as many as fit)
                    App.large = threading.current_thread()
                    release.wait(10)
            elif App.large is not None:
                during.append(1)
            return types.SimpleNamespace(status_code=200)

    def sleep(s):
        if during and not release.is_set():        # after the first probe: the large one ends
            release.set()
            App.large.join(10)
        time.sleep(0.001)
    monkeypatch.setitem(sys.modules, "function_app", App())
    monkeypatch.setattr(image_cost, "time", _fake_time(sleep=sleep, process_time=time.process_time))
    monkeypatch.setattr(bench, "time", _fake_time(sleep=sleep))       # bench.while_running's
    assert _image_cost_probed_run(which, 2)["n"] == 1


@pytest.mark.parametrize("which", ["largest", "probed"])
def test_image_cost_fails_when_no_probe_went_out_while_the_large_request_ran(monkeypatch, which):
    """The large request ended before the first probe: no figure (a median of nothing, or the
    time of a probe sent after it, of no wait), an error saying so."""
    url = "data:image/png;base64," + "A" * 100
    monkeypatch.setattr(image_cost, "costliest", lambda: ({"kinds": {}, "dearest": "x"}, url))

    class App:
        def image_embeddings(self, req):
            return types.SimpleNamespace(status_code=200)
    monkeypatch.setitem(sys.modules, "function_app", App())
    with pytest.raises(RuntimeError, match="no one-image request went out while the large"):
        _image_cost_probed_run(which, 2)


# -- bench/real_worker.py ---------------------------------------------------------------------------
# azure_functions_worker and grpc are not installed here: the host's request building and the
# rate accounting are checked against stand-in protos (plain objects with the fields used).

class _Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Body:
    def __init__(self):
        self.bytes = None


class _RpcHttp:
    def __init__(self, method, url):
        self.method, self.url = method, url
        self.headers, self.query, self.params = {}, {}, {}
        self.body = _Body()


_PROTOS = types.SimpleNamespace(
    RpcHttp=_RpcHttp, InvocationRequest=_Msg, ParameterBinding=_Msg, TypedData=_Msg,
    StreamingMessage=_Msg, StatusResult=types.SimpleNamespace(Success=1, Failure=0))


def _bare_host():
    host = object.__new__(real_worker.GrpcHost)
    host.protos = _PROTOS
    host._out, host._pending, host._replies = queue.Queue(), {}, {}
    host._lock = threading.Lock()
    host._ended = False
    host.logs = []
    host.functions = {"embeddings": types.SimpleNamespace(
        function_id="fid-1", bindings={"$return": types.SimpleNamespace(type="http"),
                                       "req": types.SimpleNamespace(type="httpTrigger")})}
    return host


def _answer(host, status=1, code="200", body=b"ok", message=""):
    """Take the next invocation request off the stream and answer it."""
    msg = host._out.get(timeout=5)
    req = msg.invocation_request
    http = types.SimpleNamespace(
        status_code=code, headers={"x-a": "1"},
        body=types.SimpleNamespace(WhichOneof=lambda _: "bytes", bytes=body, string=""))
    res = _Msg(invocation_id=req.invocation_id,
               result=_Msg(status=status, exception=_Msg(message=message)),
               return_value=_Msg(http=http))
    with host._lock:
        host._pending.pop(req.invocation_id).set_result(res)
    return req


def _invoke(host, *args, **kwargs):
    out = {}
    t = threading.Thread(target=lambda: out.update(r=host.invoke(*args, **kwargs)))
    t.start()
    req = _answer(host, **kwargs.pop("_answer", {}))
    t.join(5)
    return req, out["r"]


def test_real_worker_builds_the_rpchttp_as_the_host_does():
    host = _bare_host()
    req, (status, headers, body) = _invoke(
        host, "embeddings", "POST", "/embeddings?api-version=2024&flag&a=1&a=2&empty=",
        [("Content-Type", "application/json"), ("API-Key", "one"), ("api-key", "two")],
        b'{"input":["x"]}', {"deployment": "d"})
    assert req.function_id == "fid-1"
    (binding,) = req.input_data
    http = binding.data.http
    assert binding.name == "req"                                   # the trigger's name
    assert http.method == "POST"
    assert http.url == real_worker.BASE + "/embeddings?api-version=2024&flag&a=1&a=2&empty="
    assert http.headers == {"content-type": "application/json", "api-key": "one,two"}
    assert http.query == {"api-version": "2024", "a": "1,2"}       # no value: dropped
    assert http.params == {"deployment": "d"}
    assert http.body.bytes == b'{"input":["x"]}'
    assert (status, headers, body) == (200, {"x-a": "1"}, b"ok")


def test_real_worker_sends_no_body_without_one_and_maps_a_failed_invocation_to_500():
    host = _bare_host()
    req, r = _invoke(host, "embeddings", "GET", "/health", {})
    assert req.input_data[0].data.http.body.bytes is None
    assert req.input_data[0].data.http.query == {} and req.input_data[0].data.http.params == {}
    t_out = {}
    t = threading.Thread(target=lambda: t_out.update(
        r=host.invoke("embeddings", "POST", "/embeddings", {}, b"{}")))
    t.start()
    _answer(host, status=0, message="boom")
    t.join(5)
    assert t_out["r"] == (500, {}, b"boom")
    t = threading.Thread(target=lambda: t_out.update(
        r=host.invoke("embeddings", "POST", "/embeddings", {}, b"{}")))
    t.start()
    _answer(host, code="", body=b"x")
    t.join(5)
    assert t_out["r"][0] == 200                                    # no status code: 200


def test_real_worker_read_routes_logs_answers_and_replies():
    host = _bare_host()
    fut = __import__("concurrent.futures").futures.Future()
    host._pending["inv-1"] = fut

    def msg(kind, body):
        return types.SimpleNamespace(WhichOneof=lambda _: kind, **{kind: body})
    log = types.SimpleNamespace(message="m")
    answer = types.SimpleNamespace(invocation_id="inv-1")
    init = types.SimpleNamespace(x=1)
    grpc = types.SimpleNamespace(RpcError=type("RpcError", (Exception,), {}))
    sys.modules.setdefault("grpc", grpc)
    try:
        host._read(iter([msg("rpc_log", log), msg("invocation_response", answer),
                         msg("worker_init_response", init)]))
    finally:
        if sys.modules.get("grpc") is grpc:
            del sys.modules["grpc"]
    assert host.logs == [log] and fut.result(0) is answer and host._pending == {}
    assert host._reply_queue("worker_init_response").get_nowait() is init


def test_the_callers_settings_reach_neither_the_worker_nor_image_costs_process(monkeypatch):
    """An APPLICATIONINSIGHTS_CONNECTION_STRING in the caller's shell (as `azd env get-values`
    gives) made Microsoft's worker export telemetry while it was measured, and the caller's
    EMBEDDINGS_* set limits the local host it is compared with never gets; image_cost runs
    function_app in this process, whose telemetry would export too (its EMBEDDINGS_* apply, on
    purpose)."""
    caller = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0",
              "OTEL_TRACES_SAMPLER": "always_on", "EMBEDDINGS_MAX_INPUTS": "1"}
    for k, v in caller.items():
        monkeypatch.setenv(k, v)
    env = real_worker.worker_env(Path("/w"), {"EMBEDDINGS_API_KEYS": "k"})
    assert not set(caller) & set(env)
    assert env["EMBEDDINGS_API_KEYS"] == "k" and env["PYTHONPATH"] == "/w"
    assert env["PATH"] == os.environ["PATH"]                    # the rest passes
    image_cost.no_caller_telemetry()
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in os.environ
    assert "OTEL_TRACES_SAMPLER" not in os.environ
    assert os.environ["EMBEDDINGS_MAX_INPUTS"] == "1"


def test_real_worker_fails_the_waiting_invocations_when_the_stream_ends():
    """A worker that exits ends its stream: an invocation waiting for its answer (or sent
    after) fails at once, rather than after its 300 s time-out."""
    host = _bare_host()
    fut = __import__("concurrent.futures").futures.Future()
    host._pending["inv-1"] = fut
    grpc = types.SimpleNamespace(RpcError=type("RpcError", (Exception,), {}))
    sys.modules.setdefault("grpc", grpc)
    try:
        host._read(iter([]))
    finally:
        if sys.modules.get("grpc") is grpc:
            del sys.modules["grpc"]
    assert isinstance(fut.exception(timeout=1), RuntimeError)
    with pytest.raises(RuntimeError, match="ended"):
        host.invoke("embeddings", "GET", "/health", {}, timeout=1)


class _RateHost:
    """What rate() needs of GrpcHost: invoke() on fake CPU clocks, answering with ``status``."""
    exit_code = None                        # proc.poll(): the worker still running

    def __init__(self, worker_cpu, host_cpu, status=200):
        self.proc = types.SimpleNamespace(pid=515151, poll=lambda: self.exit_code,
                                          returncode=self.exit_code)
        self.calls, self.lock, self.status = [], threading.Lock(), status
        self.worker_cpu, self.host_cpu = worker_cpu, host_cpu
        self.closed = False

    def invoke(self, name, method, path, headers, body=b""):
        n = len(json.loads(body)["input"]) if body else 0
        with self.lock:
            self.calls.append((name, method, path, n))
            self.worker_cpu.t += 2e-3 if n == 1 else 1e-3 * n if n else 0.5e-3
            self.host_cpu.t += 1e-3 if n <= 1 else 0.25e-3 * n
        return self.status, {}, b"{}"

    def close(self):
        self.closed = True


def _rate(monkeypatch, tmp_path, status=200, rounds=2, scales=None, host_cls=None):
    worker_cpu, host_cpu = _Clock(), _Clock()
    host = (host_cls or _RateHost)(worker_cpu, host_cpu, status)
    host.threads = []

    class Thread(threading.Thread):                # how many client threads each load starts
        def __init__(self, *a, **k):
            host.threads.append(len(host.calls))
            super().__init__(*a, **k)
    monkeypatch.setattr(real_worker, "threading", types.SimpleNamespace(
        Thread=Thread, Lock=threading.Lock))
    monkeypatch.setattr(real_worker, "start", lambda args, **env: host)
    monkeypatch.setattr(real_worker, "process_cpu",
                        lambda pid: worker_cpu() if pid == 515151 else host_cpu())
    wall = _Clock()
    real_invoke = host.invoke

    def timed(*a, **k):                  # 1 ms of wall time an invocation, on the fake clock
        with host.lock:                  # (times the round's scale)
            k_round = scales[max(0, len(host.calls) - 68) // 2800] if scales else 1
            wall.t += 1e-3 * k_round
        return real_invoke(*a, **k)
    host.invoke = timed
    monkeypatch.setattr(real_worker, "time", types.SimpleNamespace(perf_counter=wall))
    out = tmp_path / "rw.json"
    args = types.SimpleNamespace(rounds=rounds, out=str(out), threads=8)
    assert real_worker.rate(args) == 0
    return host, json.loads(out.read_text())


def test_real_worker_rate_sends_the_three_loads_and_reports_per_request(monkeypatch, tmp_path):
    host, r = _rate(monkeypatch, tmp_path)
    assert host.closed
    warm = host.calls[:68]
    assert [c[3] for c in warm] == [32] * 4 + [1] * 64
    rest = host.calls[68:]
    singles = [c for c in rest if c[3] == 1]
    batched = [c for c in rest if c[3] == 32]
    health = [c for c in rest if c[3] == 0]
    assert len(singles) == 2 * 768 and len(batched) == 2 * 32 and len(health) == 2 * 2000
    assert {c[:3] for c in singles + batched} == {("embeddings", "POST", "/embeddings"
                                                   + real_worker.API)}
    assert {c[:3] for c in health} == {("health", "GET", "/health")}
    # interleaved: each round sends singles, then batched, then /health
    kinds = [c[3] for c in rest]
    bounds = [0, 768, 800, 2800, 3568, 3600, 5600]
    assert [set(kinds[a:b]) for a, b in zip(bounds, bounds[1:])] == [{1}, {32}, {0}] * 2
    s = r["summary"]
    assert s["single"] == pytest.approx({"per_s": 1000.0, "worker_cpu_ms": 2.0,
                                         "host_and_clients_cpu_ms": 1.0})
    assert s["batched"] == pytest.approx({"per_s": 1024 / 0.032,
                                          "worker_cpu_ms": 1.0, "host_and_clients_cpu_ms": 0.25})
    assert s["health"] == pytest.approx({"per_s": 1000.0, "worker_cpu_ms": 0.5,
                                         "host_and_clients_cpu_ms": 1.0})
    assert s["ratio_single_to_batched"]["median"] == pytest.approx(1000.0 / 32000.0)
    assert len(r["rounds"]) == 2 and r["threads"] == 8
    starts = {}
    for at in host.threads:                # calls made before each thread started: per load
        starts[at] = starts.get(at, 0) + 1
    assert list(starts.values()) == [8, 8, 2, 8, 8, 2, 8]     # warm-up, then the 3 loads x 2


def test_real_worker_rate_summary_is_the_median_of_the_rounds(monkeypatch, tmp_path):
    host, r = _rate(monkeypatch, tmp_path, rounds=3, scales=[1, 2, 6])
    rates = [row["single"]["per_s"] for row in r["rounds"]]
    assert rates == pytest.approx([1000.0, 500.0, 1000.0 / 6])
    assert r["summary"]["single"]["per_s"] == pytest.approx(500.0)
    assert r["summary"]["batched"]["per_s"] == pytest.approx(1024 / 0.064)
    assert r["summary"]["health"]["per_s"] == pytest.approx(500.0)


def test_real_worker_rate_ratio_is_singles_over_batched_sentences_per_second(monkeypatch,
                                                                             tmp_path):
    host, r = _rate(monkeypatch, tmp_path)
    for row in r["rounds"]:
        assert row["ratio"] == pytest.approx(row["single"]["per_s"] / row["batched"]["per_s"])
    # batched: 32 requests of 1 ms each carry 1,024 sentences: 32,000 sentences a second
    # on the fake clock unless per_s counts requests
    assert r["summary"]["batched"]["per_s"] == pytest.approx(1024 / 0.032)


def test_real_worker_start_passes_the_key_and_threads_to_the_worker(monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(real_worker, "generate_protos", lambda worker: made.append(worker))
    monkeypatch.setattr(real_worker, "GrpcHost",
                        lambda worker, env, log: made.append((worker, env, log)) or "host")
    monkeypatch.setattr(sys, "path", list(sys.path))
    args = types.SimpleNamespace(worker=tmp_path, threads=3, worker_log="/tmp/w.log")
    assert real_worker.start(args, EXTRA="1") == "host"
    assert made == [tmp_path, (tmp_path, {"EMBEDDINGS_API_KEYS": real_worker.KEY,
                                          "PYTHON_THREADPOOL_THREAD_COUNT": "3", "EXTRA": "1"},
                               "/tmp/w.log")]


def test_real_worker_rate_does_not_count_an_error_answer_as_served(monkeypatch, tmp_path):
    """A client thread's error ended that thread only, and the load was reported as served
    (1,346,872 single requests/s from a host answering 500)."""
    with pytest.raises(RuntimeError, match="^500"):
        _rate(monkeypatch, tmp_path, status=500, rounds=1)


def test_real_worker_rate_does_not_count_an_invocation_without_answer_as_served(
        monkeypatch, tmp_path):
    """An invocation that raised (its time-out: the worker gone) ended that client thread
    silently, and the round was reported with the requests it never sent."""
    class TimesOut(_RateHost):
        def invoke(self, name, method, path, headers, body=b""):
            with self.lock:             # the 101st call, whichever client thread makes it
                if len(self.calls) == 100:
                    self.calls.append(None)
                    raise TimeoutError("no answer")
            return super().invoke(name, method, path, headers, body)
    with pytest.raises(TimeoutError):
        _rate(monkeypatch, tmp_path, rounds=1, host_cls=TimesOut)
    assert not (tmp_path / "rw.json").exists()


def test_real_worker_rate_fails_when_the_worker_has_exited(monkeypatch, tmp_path):
    """Its CPU would be read from a process that is gone."""
    class Exited(_RateHost):
        exit_code = -9
    with pytest.raises(RuntimeError, match="worker exited"):
        _rate(monkeypatch, tmp_path, rounds=1, host_cls=Exited)


def test_python_versions_refuses_one_name_twice(monkeypatch):
    """"3.12=a 3.12=b" kept the second interpreter only, and the run compared nothing."""
    import python_versions
    def server(*a, **k):
        raise RuntimeError("a server was started")
    monkeypatch.setattr(python_versions.bench, "Server", server)
    monkeypatch.setattr(sys, "argv", ["python_versions.py", "3.12=/a/python", "3.12=/b/python"])
    with pytest.raises(SystemExit) as exc:
        python_versions.main()
    assert exc.value.code == 2


def test_python_versions_fails_naming_an_environment_whose_version_it_cannot_read(
        monkeypatch, tmp_path, capsys):
    """An environment whose numpy would not import (or an interpreter that did not run) went
    into the run's JSON as an empty version string, after a run of several minutes."""
    import python_versions
    def server(*a, **k):
        raise RuntimeError("a server was started")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$2" in *numpy*) echo "ModuleNotFoundError: No module '
                      f'named \'numpy\'" >&2; exit 1;; esac\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(python_versions.bench, "Server", server)
    monkeypatch.setattr(sys, "argv", ["python_versions.py", f"3.11={sys.executable}",
                                      f"3.12={python}"])
    with pytest.raises(SystemExit) as exc:
        python_versions.main()
    assert exc.value.code == (f"python_versions: 3.12 ({python}): could not read its numpy "
                              "version (exit status 1): ModuleNotFoundError: No module named "
                              "'numpy'")
