"""The side runs of `make bench` that `make bench-smoke` (CI) runs only for their exit status:
bench/soak.py (RSS over bursts, memory tuning off/on), bench/tokenize_cases.py (pathological
bodies at the limits), bench/image_memory.py (peak memory per image at the limits) and
bench/telemetry_overhead.py. Their figures go into docs/ and bench/*.json; these tests check
what the figures are of, on tiny inputs, without a full run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import image_memory  # noqa: E402
import soak  # noqa: E402
import tokenize_cases  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


# -- bench/soak.py ----------------------------------------------------------------------------------

def test_soak_rss_is_the_current_rss_in_mib_not_the_peak():
    block = bytearray(300 * 2**20)           # the peak goes up by 300 MiB ...
    block[::4096] = b"x" * len(block[::4096])
    del block                                # ... and the RSS comes back down
    before = _status_kb("VmRSS")
    rss = soak.rss_mb(os.getpid())
    lo, hi = sorted((before, _status_kb("VmRSS")))
    assert lo / 1024 - 0.5 <= rss <= hi / 1024 + 0.5         # VmRSS, KiB to MiB
    assert rss < _status_kb("VmHWM") / 1024 - 200


def test_soak_breakdown_sorts_mappings_by_kind(monkeypatch):
    a64 = 64 << 20
    smaps = "\n".join([
        f"{0x1000:x}-{0x2000:x} rw-p 00000000 00:00 0 [heap]", "Rss: 2048 kB", "Pss: 1 kB",
        f"{a64 * 3:x}-{a64 * 3 + 0x1000:x} rw-p 00000000 00:00 0", "Rss: 4096 kB", "Pss: 1 kB",
        f"{a64 * 3 + 0x1000:x}-{a64 * 3 + 0x2000:x} ---p 00000000 00:00 0", "Rss: 1024 kB", "Pss: 1 kB",
        f"{a64 * 5 + (32 << 20):x}-{a64 * 5 + (32 << 20) + 0x1000:x} rw-p 00000000 00:00 0", "Rss: 3072 kB", "Pss: 1 kB",
        f"{0x9000:x}-{0xa000:x} r-xp 00000000 08:01 42 /usr/lib/libc.so.6", "Rss: 5120 kB", "Pss: 1 kB",
        ""])
    real_open = open
    monkeypatch.setattr(soak, "open", lambda p, *a, **k: __import__("io").StringIO(smaps)
                        if str(p).endswith("/smaps") else real_open(p, *a, **k), raising=False)
    assert soak.rss_breakdown(1) == {"main_heap_mb": 2.0, "arenas": 1, "arena_heaps_mb": 5.0,
                                     "anon_other_mb": 3.0, "files_mb": 5.0}


class _StubHost:
    """What soak() needs of bench.Server, answering each body with a fixed status over loopback
    (or dropping the connection: status 0)."""
    answers = {"ok": 200, "full": 429, "refused (422)": 422, "dropped": None, "cut short": "cut"}
    exit_code = None                            # poll(): the server still running

    def __init__(self, env):
        self.env = env
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = answers.get(body.get("kind"), 200)
                if status is None:                 # no answer: the connection is closed
                    self.close_connection = True
                    return
                if status == "cut":                # an answer cut short (IncompleteRead)
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.proc = types.SimpleNamespace(pid=os.getpid(), poll=lambda: self.exit_code,
                                          returncode=self.exit_code)

    def conn(self):
        import http.client
        return http.client.HTTPConnection("127.0.0.1", self.httpd.server_address[1], timeout=30)

    def post(self, conn, path, body):
        conn.request("POST", path, body=json.dumps(body))
        conn.getresponse().read()

    def peak_rss_mb(self):
        return 999.0

    def stop(self):
        self.httpd.shutdown()


def test_soak_rss_of_a_server_that_has_exited_is_an_error_not_nan():
    """An exited child not yet waited for keeps its /proc status file, without VmRSS: read as
    NaN, it went into the figures (max() skips a NaN after a number)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: a zombie
        with pytest.raises(RuntimeError, match="exited"):
            soak.rss_mb(proc.pid)
    finally:
        proc.wait()


def _soak_with_stub(monkeypatch, mix, host=None, cycles=2):
    monkeypatch.setattr(soak, "Server", host or _StubHost)
    monkeypatch.setattr(soak, "rss_mb", lambda pid: 1.0)
    monkeypatch.setattr(soak, "rss_breakdown", lambda pid: {})
    real_time = soak.time
    monkeypatch.setattr(soak, "time", types.SimpleNamespace(
        perf_counter=real_time.perf_counter, sleep=lambda s: None))
    return soak.soak({}, mix, cycles=cycles, burst_s=0.3, idle_s=1.0, clients=2, seed=1,
                     label="t")


def test_soak_fails_when_the_server_exits_before_the_end(monkeypatch):
    """A server that exited in the last idle period answered every request of the run: its
    figures (RSS, breakdown) are of no process."""
    class Exited(_StubHost):
        exit_code = -11
    image = {"input": [{"image": "data:,"}]}
    mix = [("ok", "/embeddings", {"kind": "ok"}, 1), ("", "", {}, 0), ("", "", {}, 0),
           ("", "", {}, 0), ("image", "/images", image, 0)]
    with pytest.raises(RuntimeError, match="exited during the soak"):
        _soak_with_stub(monkeypatch, mix, Exited)


def test_soak_counts_an_answer_cut_short_as_status_0(monkeypatch):
    """http.client's IncompleteRead is no OSError: it ended the client's thread, and its
    requests were neither counted nor sent for the rest of the burst."""
    image = {"input": [{"image": "data:,"}]}
    mix = [("cut short", "/embeddings", {"kind": "cut short"}, 1), ("", "", {}, 0),
           ("", "", {}, 0), ("", "", {}, 0), ("image", "/images", image, 0)]
    out = _soak_with_stub(monkeypatch, mix, cycles=1)
    assert out["statuses"] == {0: out["requests"]["cut short"]}
    assert out["requests"]["cut short"] > 2              # not one a client before it died


def test_soak_counts_every_answer_and_samples_rss_after_the_idle_period(monkeypatch):
    events, rss = [], iter(range(1000, 0, -10))

    def rss_mb(pid):                          # the sampler thread's readings are not the figures
        if threading.current_thread() is not threading.main_thread():
            return 1.0
        events.append("rss")
        return float(next(rss))
    monkeypatch.setattr(soak, "Server", _StubHost)
    monkeypatch.setattr(soak, "rss_mb", rss_mb)
    monkeypatch.setattr(soak, "rss_breakdown", lambda pid: {})
    real_time = soak.time
    monkeypatch.setattr(soak, "time", types.SimpleNamespace(
        perf_counter=real_time.perf_counter, sleep=lambda s: events.append(f"idle {s}")))
    image = {"input": [{"image": "data:,"}]}
    mix = [("ok", "/embeddings", {"kind": "ok"}, 1), ("full", "/embeddings", {"kind": "full"}, 1),
           ("refused (422)", "/embeddings", {"kind": "refused (422)"}, 1),
           ("dropped", "/embeddings", {"kind": "dropped"}, 1), ("image", "/images", image, 0)]
    out = soak.soak({}, mix, cycles=2, burst_s=0.5, idle_s=7.0, clients=2, seed=1, label="t")
    assert set(out["requests"]) == {"ok", "full", "refused (422)", "dropped"}
    status = {name: 0 if s is None else s for name, s in _StubHost.answers.items()}
    assert out["statuses_by_body"] == {name: {status[name]: n} for name, n in out["requests"].items()}
    assert out["statuses"] == {status[name]: n for name, n in out["requests"].items()}
    # loaded; then per cycle: after the burst, the idle period, after it
    assert events == ["rss", "rss", "idle 7.0", "rss", "rss", "idle 7.0", "rss"]
    assert out["loaded_mb"] == 1000.0
    assert out["after_burst_mb"] == [990.0, 970.0] and out["after_idle_mb"] == [980.0, 960.0]
    assert out["max_after_idle_mb"] == 980.0 and out["last_after_idle_mb"] == 960.0
    assert out["peak_mb"] == 999.0


def _main_with(monkeypatch, argv, runs):
    calls = []

    def fake_soak(env, mix, cycles, burst_s, idle_s, clients, seed, label):
        calls.append({"env": env, "cycles": cycles, "label": label})
        r = runs[len(calls) - 1]
        return {"label": label, "env": env, "loaded_mb": 100.0, "peak_mb": 300.0,
                "after_burst_mb": r.get("after_burst", [200.0, 250.0, 220.0]),
                "after_idle_mb": [150.0, 170.0, 160.0], "max_after_idle_mb": 170.0,
                "last_after_idle_mb": 160.0,
                "after_idle_breakdown": {"main_heap_mb": 1.0, "arena_heaps_mb": 2.0, "arenas": 1,
                                         "anon_other_mb": 3.0, "files_mb": 4.0},
                "requests": {k: sum(v.values()) for k, v in r["by_body"].items()},
                "statuses": {s: sum(v.get(s, 0) for v in r["by_body"].values())
                             for s in {s for v in r["by_body"].values() for s in v}},
                "statuses_by_body": r["by_body"], "series": []}
    monkeypatch.setattr(soak, "build_mix", lambda seed: [])
    monkeypatch.setattr(soak, "soak", fake_soak)
    monkeypatch.setattr(sys, "argv", ["soak.py", *argv])
    return calls


GOOD = {"by_body": {"text: 32 short": {200: 50, 429: 2}, "text: 8 MB without spaces (422)": {422: 3}}}


def test_soak_runs_tuning_off_then_on_and_passes_a_good_run(monkeypatch, tmp_path, capsys):
    calls = _main_with(monkeypatch, ["--minutes", "2", "--burst", "40", "--idle", "20",
                                     "--out", str(tmp_path / "s.json")], [GOOD, GOOD])
    soak.main()
    assert [c["env"] for c in calls] == [{"EMBEDDINGS_MEMORY_TUNING": "off"}, {}]
    assert [c["cycles"] for c in calls] == [2, 2]                 # 2 minutes of 60 s cycles
    table = capsys.readouterr().out
    assert "| off | 100 MiB | 300 MiB | 200 / 250 MiB | 150 / 170 / 160 MiB | 55 |" in table
    assert "failed" not in json.loads((tmp_path / "s.json").read_text())


@pytest.mark.parametrize("bad", [
    {"by_body": {"text: 32 short": {200: 50, 422: 1}}},                 # a served body refused
    {"by_body": {"text: 32 short": {200: 50, 0: 1}}},                   # a dropped connection
    {"by_body": {"text: 32 short": {200: 10, 429: 40}}},                # mostly a full queue
])
def test_soak_fails_a_run_that_did_not_measure_what_it_says(monkeypatch, tmp_path, bad):
    _main_with(monkeypatch, ["--cycles", "1", "--out", str(tmp_path / "s.json")], [GOOD, bad])
    with pytest.raises(SystemExit) as exc:
        soak.main()
    assert exc.value.code not in (None, 0)
    # its file says so at the top: it read as a good run's
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["failed"] == exc.value.code and saved["failed"].startswith("soak: unexpected")


# -- bench/tokenize_cases.py ------------------------------------------------------------------------

def test_every_tokenize_case_is_at_the_body_limit_not_over_it():
    for name in tokenize_cases.cases():
        inputs, truncate = tokenize_cases._inputs(name)
        body = len(json.dumps({"input": inputs, "truncate": truncate}, ensure_ascii=False).encode())
        assert body <= tokenize_cases.BODY_LIMIT and len(inputs) <= 2048, name
        if name.startswith("8 MB"):
            assert body > 0.9 * tokenize_cases.BODY_LIMIT, (name, body)
        if name.startswith("2048 x 4 KB"):      # (the CJK ones were at 73 %: 2 units of 1,500 bytes)
            assert body > 0.85 * tokenize_cases.BODY_LIMIT, (name, body)
        if name.startswith("legit max"):
            import workloads
            assert inputs == workloads.build(2048, 1, 1)["longest"]


def test_a_tokenize_case_reports_the_characters_and_tokens_of_its_inputs(monkeypatch, capsys):
    """Inputs shorter than the tokenizer's first piece, so that each character is handed to it
    once (a longer input has the word cut by a piece's end read again: the docstring sentences
    of "2048 x 15 words" are that long on some Python versions)."""
    import time
    inputs = [f"sentence number {i} of the case, in nine words" for i in range(2048)]
    monkeypatch.setattr(tokenize_cases, "_inputs", lambda name: (inputs, "NONE"))
    monkeypatch.setattr(time, "process_time", lambda: 1.0)     # no CPU time passes ...
    tokenize_cases.child("2048 x 15 words")                       # ... wall time does
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["chars_in"] == r["chars_tokenized"] == sum(map(len, inputs))   # NONE: every character
    assert r["cpu_s"] == 0 and r["wall_s"] > 0
    tokens = int(r["outcome"].removeprefix("ok, ").removesuffix(" tokens").replace(",", ""))
    assert tokens >= 2048 * 9


def _fake_proc(proc: dict, statm: bool = False):
    """``open`` for /proc/self/status (``proc``: field -> KiB) and /proc/self/clear_refs, whose
    "5" resets VmHWM to VmRSS as the kernel does; /proc/self/statm too if ``statm``."""
    import io

    class ClearRefs(io.StringIO):
        def close(self):
            if self.getvalue() == "5":          # the kernel: the peak back to the current RSS
                proc["VmHWM"] = proc["VmRSS"]
            super().close()

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/clear_refs":
            return ClearRefs()
        if statm and path == "/proc/self/statm":
            page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
            return io.StringIO(f"1 {proc['VmRSS'] // page_kb} 0 0 0 0 0\n")
        assert path == "/proc/self/status", path
        return io.StringIO("".join(f"{k}:\t{v} kB\n" for k, v in proc.items()))
    return fake_open


def test_a_tokenize_case_growth_is_of_the_call_not_below_an_earlier_peak(monkeypatch, capsys):
    """Catches the growth taken over the peak so far (building the 8 MiB body, loading), which
    reads a growth below that peak as none: 0.0 MiB for "2048 x 4 KB English" (10 MiB)."""
    import resource

    from embedding_core.text import TextBackend

    mib = 1024                                  # /proc/self/status is in KiB
    proc = {"VmRSS": 100 * mib, "VmHWM": 300 * mib}   # the body's build peaked at 300 MiB
    fake_open = _fake_proc(proc, statm=True)
    real_tokenize = TextBackend.tokenize

    def tokenize(self, inputs, *args, **kwargs):
        if inputs != ["warm up"]:               # the measured call grows the RSS by 30 MiB
            proc["VmHWM"] = max(proc["VmHWM"], proc["VmRSS"] + 30 * mib)
        return real_tokenize(self, inputs, *args, **kwargs)
    monkeypatch.setattr(tokenize_cases, "open", fake_open, raising=False)
    monkeypatch.setattr(TextBackend, "tokenize", tokenize)
    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(
        ru_maxrss=proc["VmHWM"]))
    monkeypatch.setattr(tokenize_cases, "_inputs", lambda name: (["a few words"] * 4, "END"))
    tokenize_cases.child("2048 x 15 words")
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["rss_growth_mb"] == 30, r


# -- a failed case fails the run (make bench-smoke is CI's only run of the two scripts) -------------

def _run_with_failing_children(tmp_path, *argv):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        'import sys\nif "--child" in sys.argv:\n    raise SystemExit("child made to fail")\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "IMAGE_MEMORY_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_tokenize_cases_fails_when_a_case_fails(tmp_path):
    res = _run_with_failing_children(tmp_path, "bench/tokenize_cases.py", "--only",
                                     "8 MB, no spaces, END", "--out", str(tmp_path / "out.json"))
    assert "| 8 MB, no spaces, END | failed: ['SystemExit: child made to fail'] |" in res.stdout
    assert res.returncode == 1 and "1 of 1 cases failed: 8 MB, no spaces, END" in res.stderr
    # what did run, in a file that says the run failed (a list of rows is a good run's)
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "failed": "1 of 1 cases failed: 8 MB, no spaces, END", "cases": []}


def test_image_memory_fails_when_a_case_fails(tmp_path):
    res = _run_with_failing_children(tmp_path, "bench/image_memory.py", "--only", "bmp RLE8 @ 1 Mpx",
                                     "--out", str(tmp_path / "out.json"))
    assert "| bmp RLE8 @ 1 Mpx | failed: ['SystemExit: child made to fail'] |" in res.stdout
    assert res.returncode == 1 and "1 of 1 cases failed: bmp RLE8 @ 1 Mpx" in res.stderr
    # what did run, in a file that says the run failed (a list of rows is a good run's)
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "failed": "1 of 1 cases failed: bmp RLE8 @ 1 Mpx", "cases": []}


@pytest.mark.parametrize("script", ["tokenize_cases", "image_memory"])
def test_only_matching_no_case_fails_listing_the_cases_and_writes_nothing(
        monkeypatch, tmp_path, capsys, script):
    """A misspelt --only ran nothing: an empty table, `[]` written, and the step passed."""
    module = {"tokenize_cases": tokenize_cases, "image_memory": image_memory}[script]
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--only", "8 MB no spaces", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code not in (None, 0)
    err = capsys.readouterr().err
    assert "no case matches --only '8 MB no spaces'; the cases: " in err
    names = list(tokenize_cases.cases()) if script == "tokenize_cases" else image_memory.CASES
    assert all(name in err for name in names)
    assert not out.exists()


def test_image_memory_keeps_pictures_apart_when_the_script_that_builds_them_changes(
        monkeypatch, tmp_path):
    """Generated pictures are kept between runs: a picture built by an earlier version of the
    script (another size, another mode) is never measured as the new one."""
    monkeypatch.setattr(image_memory, "CACHE", tmp_path)
    before = image_memory.cache_dir()
    changed = tmp_path / "image_memory.py"
    changed.write_bytes(Path(image_memory.__file__).read_bytes() + b"\nW, H = 8000, 4000\n")
    monkeypatch.setattr(image_memory, "__file__", str(changed))
    after = image_memory.cache_dir()
    assert before != after and before.parent == after.parent == tmp_path


# -- bench/image_memory.py --------------------------------------------------------------------------

@pytest.mark.parametrize("name, pixels, mode", [
    ("png 16-bit grey", 40_000_000, "I;16"), ("webp RGB lossless", 40_000_000, "RGB"),
    ("bmp RLE8", 40_000_000, "P"), ("bmp RLE8 @ 1 Mpx", 1024 * 1024, "P")])
def test_image_memory_cases_are_the_size_and_mode_they_are_named(monkeypatch, tmp_path, name, pixels, mode):
    from PIL import Image

    from embedding_core.settings import Settings

    assert Settings().max_image_pixels == 40_000_000           # "at the limit"
    monkeypatch.setattr(image_memory, "CACHE", tmp_path)
    path, fmt = image_memory.cached(name)
    im = Image.open(path)
    assert (im.size[0] * im.size[1], im.mode) == (pixels, mode)
    assert path.stat().st_size <= image_memory.MAX_BYTES


def test_an_image_memory_child_reports_the_growth_and_the_encoded_size(tmp_path):
    from PIL import Image

    path = tmp_path / "small.png"
    Image.new("RGB", (320, 240), (10, 200, 30)).save(path)
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "image_memory.py"), "--child",
                          str(path), "png"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["outcome"] == "ok" and r["size"] == [320, 240] and r["mode"] == "RGB"
    assert r["bytes"] == path.stat().st_size                # the file, not its base64 data URL
    assert 0 <= r["growth_mb"] < 20                         # a 0.08 Mpx picture: not the process


def test_image_memory_growth_is_of_the_call_not_of_the_build_or_the_warm_up(
        monkeypatch, tmp_path, capsys):
    """Catches a peak not reset before the measured call (build and warm-up peaks counted)."""
    from PIL import Image

    from embedding_core import images

    mib = 1024                                  # /proc/self/status is in KiB
    proc = {"VmRSS": 100 * mib, "VmHWM": 300 * mib}   # the data URL's build peaked at 300 MiB
    spikes = iter([80 * mib, 30 * mib])         # the warm-up's peak, then the measured call's
    fake_open = _fake_proc(proc)

    def image_to_pixel_values(url, settings, index):
        proc["VmHWM"] = max(proc["VmHWM"], proc["VmRSS"] + next(spikes))
    monkeypatch.setattr(image_memory, "open", fake_open, raising=False)
    monkeypatch.setattr(images, "image_to_pixel_values", image_to_pixel_values)
    monkeypatch.setattr(images, "decode_bytes", images.decode_bytes)    # child() wraps it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    Image.new("RGB", (32, 24)).save(tmp_path / "small.png")
    image_memory.child(str(tmp_path / "small.png"), "png")
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["growth_mb"] == 30, r


@pytest.mark.parametrize("missing", ["VmRSS", "VmHWM"])
def test_an_image_memory_field_missing_from_proc_status_is_an_error_not_0(monkeypatch, missing):
    """It read as 0: without VmRSS the whole peak was reported as the growth, without VmHWM a
    negative growth."""
    proc = {"VmRSS": 100 * 1024, "VmHWM": 300 * 1024}
    monkeypatch.setattr(image_memory, "open", _fake_proc(proc), raising=False)
    assert image_memory._rss_kb("VmHWM") == 300 * 1024
    del proc[missing]
    with pytest.raises(RuntimeError, match=rf"^no {missing} in /proc/self/status$"):
        image_memory._rss_kb(missing)


# -- bench/telemetry_overhead.py --------------------------------------------------------------------

def test_telemetry_overhead_reports_a_slower_telemetry_as_slower(monkeypatch):
    """With telemetry made 50 ms slower per request when on, "on" must come out slower: the
    throughput ratio (on/off) and the rates, the request-thread time (on only) and the cost as a
    share of the request."""
    import time

    import telemetry_overhead
    from embedding_core import telemetry

    real = telemetry.record

    def slow_record(*a, **k):
        if telemetry._recorder is not telemetry._OFF:
            time.sleep(0.05)
        return real(*a, **k)
    monkeypatch.setattr(telemetry, "record", slow_record)
    out = telemetry_overhead.throughput(2, 4, 1)
    for name, units in (("single", 1), ("batch32", 32)):
        t = out[name]
        assert t["requests_per_block"] == {"single": 4, "batch32": 1}[name] and t["pairs"] == 2
        assert t["throughput_ratio"] < 0.8, t
        assert t["throughput_ratio_95ci"][0] <= t["throughput_ratio"] <= t["throughput_ratio_95ci"][1]
        assert t["on_per_second"] < t["off_per_second"]
        assert t["off_per_second"] * t["mean_request_ms_off"] == pytest.approx(1000 * units)
        assert t["request_thread_us"] >= 50_000                   # the record() calls with it on
        assert t["cost_percent"] == pytest.approx(           # µs of telemetry over ms of request
            100 * (t["request_thread_us"] + t["telemetry_thread_us"]) / 1000 / t["mean_request_ms_off"])


def test_telemetry_overhead_alternates_off_and_on_over_distinct_requests(monkeypatch):
    """Which mode goes first alternates from pair to pair; the batches are distinct sentences;
    the per-request time is of every request of every pair; a failed request fails the run, and
    leaves the process's telemetry as it found it."""
    import time

    import telemetry_overhead
    from embedding_core import service as service_module
    from embedding_core import telemetry

    calls = []
    real = service_module.EmbeddingService.embeddings

    def spy(self, req):
        t0 = time.perf_counter()
        res = real(self, req)
        calls.append({"on": telemetry._recorder is not telemetry._OFF, "input": json.loads(req.body)["input"],
                      "s": time.perf_counter() - t0})
        return res
    monkeypatch.setattr(service_module.EmbeddingService, "embeddings", spy)
    before = set(threading.enumerate())
    out = telemetry_overhead.throughput(4, 3, 2)
    # Its service's inference workers stopped: none left running (singles_cost's run, which
    # counts the process's, read 7 instead of 1 after this test).
    assert not [t for t in set(threading.enumerate()) - before
                if t.name.startswith("inference-worker") and t.is_alive()]
    measured = calls[2 * (3 + 1):]                # after the warm-up: the 3 singles + 1 batch, off and on
    singles, batches = measured[:4 * 2 * 3], measured[4 * 2 * 3:]
    assert len(batches) == 4 * 2 * 2
    firsts = [singles[i]["on"] for i in range(0, len(singles), 3)][::2]    # the first block of each pair
    assert firsts == [False, True, False, True]
    pair = [tuple(c["input"]) for c in batches[:2]]
    assert len(pair[0]) == len(pair[1]) == 32 and not set(pair[0]) & set(pair[1])
    off_ms = 1000 * sum(c["s"] for c in singles if not c["on"]) / (4 * 3)
    assert 0.5 * off_ms <= out["single"]["mean_request_ms_off"] <= 2 * off_ms + 1

    class Refused:
        status, body = 429, b"{}"
    monkeypatch.setattr(service_module.EmbeddingService, "embeddings", lambda self, req: Refused())
    with pytest.raises(RuntimeError, match="^429"):
        telemetry_overhead.throughput(2, 2, 1)
    assert service_module.telemetry is telemetry             # restored: nothing left timed
    monkeypatch.undo()
    assert _the_telemetry_thread_records_a_request(telemetry_overhead.KEY)


def _the_telemetry_thread_records_a_request(key: str) -> bool:
    """A request made now is recorded by the process's telemetry thread, without flush(): the
    run's long batch delay did not stay with it."""
    import time

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from embedding_core import telemetry
    from embedding_core.registry import Registry
    from embedding_core.service import ApiRequest, EmbeddingService
    from embedding_core.settings import Settings

    exporter, tp = InMemorySpanExporter(), TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(tp, MeterProvider())
    try:
        svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": key}),
                               Registry.from_settings(Settings.from_env({})))
        res = svc.embeddings(ApiRequest("POST", "/embeddings",
                                        {"api-key": key, "content-type": "application/json"},
                                        {"api-version": "2024-05-01-preview"},
                                        b'{"input": ["hello"]}'))
        assert res.status == 200, res.body[:200]
        deadline = time.monotonic() + 60                  # liveness, not timing
        while not exporter.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(exporter.get_finished_spans()) == 1
    finally:
        telemetry.reset()
        tp.shutdown()


def _throughput_on_stand_in_clocks(monkeypatch, pairs: int = 4) -> dict:
    """telemetry_overhead.throughput() with a stand-in service, record() and flush() that move
    clocks of their own (nothing measured). Per request, off: 10 ms of wall and 4 ms of process
    CPU; on: 8 ms of CPU and 12.5 or 15 ms of wall, from one on block to the next (so any 4
    pairs' wall ratios are 0.8, 2/3, 0.8 and 2/3 in some order). flush() takes the telemetry
    thread 20 µs of thread CPU per request recorded since the last flush."""
    import types

    import telemetry_overhead
    import workloads
    from embedding_core import service as service_module
    from embedding_core import telemetry

    clock = {"wall": 0.0, "cpu": 0.0, "thread": 0.0}
    state = {"recorded": 0, "on_blocks": 0}

    def on() -> bool:
        return telemetry._recorder is not telemetry._OFF

    def embeddings(self, req):
        service_module.telemetry.record()                 # the run's timed record()
        wall, cpu = ((12.5e-3, 15e-3)[state["on_blocks"] % 2], 8e-3) if on() else (10e-3, 4e-3)
        clock["wall"] += wall
        clock["cpu"] += cpu
        return types.SimpleNamespace(status=200, body=b"{}")

    def record(*args, **kwargs):
        state["recorded"] += on()

    def flush(*args, **kwargs):
        clock["thread"] += 20e-6 * state["recorded"]
        state["recorded"] = 0
        state["on_blocks"] += on()
    monkeypatch.setattr(workloads, "build", lambda n, *args: {"short": [f"s{i}" for i in range(n)]})
    monkeypatch.setattr(service_module.EmbeddingService, "embeddings", embeddings)
    monkeypatch.setattr(telemetry, "record", record)
    monkeypatch.setattr(telemetry, "flush", flush)
    monkeypatch.setattr(telemetry_overhead, "time", types.SimpleNamespace(
        perf_counter=lambda: clock["wall"], process_time=lambda: clock["cpu"],
        thread_time=lambda: clock["thread"]))
    return telemetry_overhead.throughput(pairs, 3, 2)


def test_telemetry_overhead_cpu_ratio_is_cpu_seconds_over_cpu_seconds(monkeypatch):
    """Catches a CPU ratio taken from the off block's wall time instead of its CPU time."""
    out = _throughput_on_stand_in_clocks(monkeypatch)
    for t in (out["single"], out["batch32"]):
        assert t["cpu_ratio"] == pytest.approx(0.5), t         # 4 ms of CPU off, 8 ms on
        assert t["cpu_ratio_95ci"] == pytest.approx([0.5, 0.5]), t


def test_telemetry_overhead_telemetry_thread_time_is_of_the_on_blocks(monkeypatch):
    """Catches the telemetry thread's time per request taken from the off blocks (near 0)."""
    out = _throughput_on_stand_in_clocks(monkeypatch)
    for t in (out["single"], out["batch32"]):
        assert t["telemetry_thread_us"] == pytest.approx(20), t


def test_telemetry_overhead_interval_is_students_t_95_percent(monkeypatch):
    """Catches a 95 % interval of the throughput ratio made too narrow (sd / n, not sd / √n, or
    the normal 1.96 for Student's t with few pairs)."""
    import math
    import statistics

    import telemetry_overhead

    # Student's t 97.5 % quantiles, as published: 1, 3, 39 and 120 degrees of freedom
    for df, t975 in ((1, 12.706), (3, 3.182), (39, 2.0227), (120, 1.9799)):
        assert telemetry_overhead.t_975(df) == pytest.approx(t975, abs=1e-3), df
    t = _throughput_on_stand_in_clocks(monkeypatch, pairs=4)["single"]
    logs = [math.log(r) for r in (0.8, 2 / 3, 0.8, 2 / 3)]        # the pairs' ratios, on/off
    mean, half = statistics.fmean(logs), 3.182 * statistics.stdev(logs) / math.sqrt(4)
    assert t["throughput_ratio"] == pytest.approx(math.exp(mean))
    assert t["throughput_ratio_95ci"] == pytest.approx([math.exp(mean - half),
                                                        math.exp(mean + half)]), t


def test_telemetry_overhead_json_states_the_machines_cpu_count(monkeypatch, tmp_path):
    """Catches a wrong CPU count in the JSON's machine block (where the figures were taken)."""
    import telemetry_overhead

    monkeypatch.setattr(telemetry_overhead, "throughput", lambda *args: {})
    monkeypatch.setattr(telemetry_overhead, "report", lambda r: "")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(sys, "argv", ["telemetry_overhead.py", "--smoke",
                                      "--out", str(tmp_path / "t.json")])
    telemetry_overhead.main()
    assert json.loads((tmp_path / "t.json").read_text())["machine"]["cpus"] == 6
