"""The plumbing of `make bench` (bench/bench.py) that every measurement goes through: the local
host it starts (its settings, its CPUs, its peak RSS), the client side (errors, concurrency, the
CPUs the clients run on, reconnecting), and what a run records about the machine and the package.
A wrong answer here changes every figure of a run without any step failing."""

from __future__ import annotations

import importlib.metadata
import io
import os
import json
import re
import threading
import time
import types
from pathlib import Path

import pytest

from conftest import ROOT

import sys
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


# -- the local host it measures ---------------------------------------------------------------------

def test_the_bench_server_has_its_own_settings_not_the_callers(monkeypatch):
    """The caller's EMBEDDINGS_* variables do not reach it; those it is given do; a refused
    request raises (it is never timed as a served one)."""
    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "1")
    server = bench.Server()
    try:
        conn = server.conn()
        assert b'"embedding"' in server.post(conn, "/embeddings", {"input": ["one", "two"]})
        conn.close()
    finally:
        server.stop()
    monkeypatch.delenv("EMBEDDINGS_MAX_INPUTS")
    server = bench.Server({"EMBEDDINGS_MAX_INPUTS": "1"})
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": ["one"]})
        with pytest.raises(RuntimeError, match=r"^4\d\d: "):
            server.post(conn, "/embeddings", {"input": ["one", "two"]})
        conn.close()
    finally:
        server.stop()


def test_the_callers_telemetry_and_host_settings_reach_no_process_measured(monkeypatch):
    """An APPLICATIONINSIGHTS_CONNECTION_STRING in the caller's shell turned the Azure Monitor
    exporter on in the server measured (each request also recorded and exported), and the
    caller's PYTHON_THREADPOOL_THREAD_COUNT or LOCAL_HOST_* set the host's threads and limits;
    the run recorded none of it. So for the cold start's processes."""
    caller = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0;IngestionEndpoint="
              "http://127.0.0.1:9/", "OTEL_TRACES_SAMPLER": "always_on",
              "PYTHON_THREADPOOL_THREAD_COUNT": "1", "LOCAL_HOST_BACKLOG": "1"}
    for k, v in caller.items():
        monkeypatch.setenv(k, v)
    server = bench.Server({"LOCAL_HOST_KEEP_ALIVE_SECONDS": "0.2"})     # given: applies
    try:
        raw = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
        env = dict(x.decode().split("=", 1) for x in raw if b"=" in x)
    finally:
        server.stop()
    assert not set(caller) & set(env)
    assert env["LOCAL_HOST_KEEP_ALIVE_SECONDS"] == "0.2"
    seen = []

    def run(*args, env, **kwargs):
        seen.append(env)
        raise RuntimeError("stop")
    monkeypatch.setattr(bench, "subprocess", types.SimpleNamespace(run=run))   # bench's alone
    with pytest.raises(RuntimeError, match="stop"):
        bench.cold_start(1, "text")
    assert seen and not set(caller) & set(seen[0])


@pytest.mark.parametrize("script, status", [
    ("echo 'Traceback (most recent call last):' >&2\n"
     "echo \"ModuleNotFoundError: No module named 'onnxruntime'\" >&2\nexit 1\n", 1),
    ("echo \"ModuleNotFoundError: No module named 'onnxruntime'\" >&2\n", 0)])   # no answer
def test_a_cold_start_process_that_fails_fails_the_run_with_its_status_and_stderr(
        monkeypatch, tmp_path, script, status):
    """Its CalledProcessError (check=True, capture_output=True) said neither the step nor the
    child's stderr; one that exited 0 without an answer was an IndexError."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(python))
    what = (rf"^cold_start: a fresh process \({re.escape(str(python))}\) importing function_app "
            rf"and embedding 'hello world' failed: exit status {status}; its stderr ends:\n")
    with pytest.raises(RuntimeError, match=what + r"(.*\n)?ModuleNotFoundError: No module named "
                       r"'onnxruntime'$"):
        bench.cold_start(1, "text")


def test_the_in_process_runs_have_the_local_hosts_settings_not_the_callers(monkeypatch):
    """one_core.py and singles_cost.py compare function_app in-process with the local host:
    the caller's EMBEDDINGS_* (which the local host never gets) applied to the in-process side."""
    import one_core
    from conftest import process_service

    for name in [k for k in os.environ if k.startswith(bench.CALLER_SETTINGS)]:
        monkeypatch.delenv(name)        # restored afterwards (in_process_clients deletes them)
    from embedding_core import service as service_module
    with process_service(monkeypatch):
        monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "1")
        run = one_core.in_process_clients()
        try:
            run([{"input": ["one", "two"]}], 1)          # the default limit: served
        finally:    # its inference workers: none left for later tests that count them
            service_module.get_service().queue.stop()
    assert "EMBEDDINGS_MAX_INPUTS" not in os.environ


def test_the_bench_server_passes_truncate_and_reconnects_after_the_keep_alive_time():
    server = bench.Server({"LOCAL_HOST_KEEP_ALIVE_SECONDS": "0.2"})
    try:
        conn = server.conn()
        long_text = " ".join(["word"] * 600)                    # over 256 tokens: needs truncate
        server.post(conn, "/embeddings", {"input": [long_text], "truncate": "END"})
        time.sleep(1.0)                                          # the host closes the idle connection
        server.post(conn, "/embeddings", {"input": ["hello"]})   # reconnects once
        conn.close()
    finally:
        server.stop()


def test_the_bench_servers_peak_rss_is_its_vmhwm_in_mib(monkeypatch):
    status = "Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t 3072 kB\nVmRSS:\t 1024 kB\n"
    monkeypatch.setattr(bench, "open", lambda path, *a, **k: io.StringIO(status)
                        if path == "/proc/4242/status" else open(path, *a, **k), raising=False)
    server = bench.Server.__new__(bench.Server)          # no process: only its pid is read
    server.proc = types.SimpleNamespace(pid=4242)
    assert server.peak_rss_mb() == 3.0                    # VmHWM (the peak), KiB to MiB


def test_the_peak_rss_of_a_server_that_has_exited_is_an_error_not_nan():
    """An exited child not yet waited for keeps a status file without VmHWM: the NaN read from
    it went into the run's JSON as the largest request's peak RSS."""
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: a zombie
        server = bench.Server.__new__(bench.Server)
        server.proc = proc
        with pytest.raises(RuntimeError, match="exited"):
            server.peak_rss_mb()
    finally:
        proc.wait()


def test_the_bench_server_reconnects_when_the_host_closed_the_idle_connection_cleanly():
    """A kept-alive connection the host closed (FIN, as at its keep-alive time-out) before the
    next request: the request goes out again on a new connection."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def host():
        for n in range(2):
            sock, _ = listener.accept()
            with sock, sock.makefile("rb") as rf:
                while True:
                    head = [rf.readline()]
                    while head[-1] not in (b"\r\n", b""):
                        head.append(rf.readline())
                    if head[0] == b"":
                        break
                    length = next(int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length"))
                    served.append((n, json.loads(rf.read(length))))
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    if n == 0:
                        sock.shutdown(socket.SHUT_WR)        # closed after the first answer
                        while rf.read(4096):
                            pass
                        break
    t = threading.Thread(target=host, daemon=True)
    t.start()
    server = bench.Server.__new__(bench.Server)
    server.host, server.port = listener.getsockname()
    conn = server.conn()
    server.post(conn, "/embeddings", {"input": ["first"]})
    time.sleep(0.2)                                       # the FIN arrives
    server.post(conn, "/embeddings", {"input": ["second"]})
    conn.close()
    t.join(10)
    listener.close()
    assert served == [(0, {"input": ["first"]}), (1, {"input": ["second"]})]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_server_given_cpus_runs_every_thread_on_them():
    cpu = min(os.sched_getaffinity(0))
    server = bench.Server(cpus={cpu})
    try:
        conn = server.conn()
        server.post(conn, "/embeddings", {"input": ["hello world"] * 8})   # its workers start
        conn.close()
        tids = os.listdir(f"/proc/{server.proc.pid}/task")
        assert len(tids) > 1
        assert {tid: os.sched_getaffinity(int(tid)) for tid in tids} == {tid: {cpu} for tid in tids}
    finally:
        server.stop()


# -- the client side --------------------------------------------------------------------------------

class _NoServer:
    """run_clients' view of a server, for a ``send`` that needs none."""
    def __init__(self, cpus=None):
        self.cpus = cpus

    def conn(self):
        return io.BytesIO()


def test_run_clients_raises_a_failed_request():
    def send(conn, body):
        if body == 3:
            raise RuntimeError("422: refused")
    with pytest.raises(RuntimeError, match="422"):
        bench.run_clients(_NoServer(), "/embeddings", list(range(8)), 2, send=send)


def test_run_clients_raises_an_answer_without_a_vector_per_input():
    """A 200 whose data has fewer vectors than the request had inputs is no request served."""
    class Short(_NoServer):
        def post(self, conn, path, body):
            n = len(body["input"]) - (body["input"] == ["c"])      # one vector short for "c"
            return json.dumps({"data": [{"index": i, "embedding": [0.0]}
                                        for i in range(n)]}, separators=(",", ":")).encode()
    bodies = [{"input": ["a", "b"]}, {"input": ["c"]}, {"input": ["d"]}]
    bench.run_clients(Short(), "/embeddings", bodies[:1] + bodies[2:], 2)       # all served
    with pytest.raises(RuntimeError, match="0 vectors for 1 inputs"):
        bench.run_clients(Short(), "/embeddings", bodies, 2)


def test_run_clients_raises_when_it_cannot_connect():
    """A client that cannot open its connection fails the run, rather than leaving its requests
    unsent and the run timed as if they had been served."""
    class Unreachable(_NoServer):
        def conn(self):
            raise ConnectionRefusedError("refused")
    with pytest.raises(ConnectionRefusedError):
        bench.run_clients(Unreachable(), "/embeddings", list(range(8)), 2, send=lambda c, b: None)


def test_a_local_host_that_does_not_start_fails_with_its_output(monkeypatch, tmp_path):
    """An interpreter that cannot run the local host (here: one without the app's packages)
    fails the run with what the host printed, not with requests timed against no server."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named uvicorn'\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    with pytest.raises(RuntimeError, match="did not start:\n.*No module named uvicorn"):
        bench.Server()


def test_an_interpreter_that_runs_the_host_as_its_child_fails(monkeypatch, tmp_path):
    """A wrapper that starts Python without exec: the host answered from its child, while its
    CPUs were set on, and its peak RSS and CPU read from, the wrapper."""
    import signal
    python, pidfile = tmp_path / "python", tmp_path / "child.pid"
    python.write_text(f'#!/bin/sh\n"{sys.executable}" "$@" &\necho $! > "{pidfile}"\nwait $!\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    try:
        with pytest.raises(RuntimeError, match="another process"):
            server = bench.Server()
            server.stop()
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_clients_runs_as_many_concurrent_clients_as_asked():
    barrier = threading.Barrier(4, timeout=20)      # only passes with 4 requests in flight at once
    bench.run_clients(_NoServer(), "/embeddings", list(range(8)), 4, send=lambda c, b: barrier.wait())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_clients_run_on_the_servers_cpus_unless_told_otherwise():
    cpu = min(os.sched_getaffinity(0))
    seen, lock = [], threading.Lock()

    def send(conn, body):
        with lock:
            seen.append(frozenset(os.sched_getaffinity(0)))
    bench.run_clients(_NoServer(cpus={cpu}), "/embeddings", list(range(4)), 2, send=send)
    assert set(seen) == {frozenset({cpu})}
    seen.clear()
    bench.run_clients(_NoServer(), "/embeddings", list(range(4)), 2, send=send)
    assert set(seen) == {frozenset(os.sched_getaffinity(0))}


def test_chunks_keep_every_item():
    assert bench.chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert bench.chunks(list(range(65)), 32)[-1] == [64]
    assert bench.chunks([], 32) == []


# -- what a run records ---------------------------------------------------------------------------

class _Dist:
    def __init__(self, root: Path, name: str, sizes: list[int], requires: list[str]):
        self.root, self.requires = root / name, requires
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = []
        for i, n in enumerate(sizes):
            (self.root / f"f{i}").write_bytes(b"x" * n)
            self.files.append(f"f{i}")

    def locate_file(self, f):
        return self.root / f


def test_package_size_counts_what_funcignore_ships_and_each_dependency_once(monkeypatch, tmp_path):
    app = tmp_path / "app"
    (app / "build").mkdir(parents=True)
    (app / ".venv-tools").mkdir()
    (app / "embedding_core").mkdir()
    (app / ".funcignore").write_text("# comment\n/build/\n.venv*\n*_env/\ntests\n")
    (app / "proj_env").mkdir()
    (app / "proj_env" / "lib.so").write_bytes(b"x" * 5_000_000)      # azd's virtualenv
    (app / "function_app.py").write_bytes(b"x" * 1_000_000)
    (app / "embedding_core" / "a.py").write_bytes(b"x" * 1_000_000)
    (app / "build" / "big.whl").write_bytes(b"x" * 5_000_000)
    (app / ".venv-tools" / "big").write_bytes(b"x" * 5_000_000)
    (app / "tests").mkdir()
    (app / "tests" / "t.py").write_bytes(b"x" * 5_000_000)
    (app / "requirements.txt").write_text("# pins\n-r other.txt\nalpha==1.0\nbeta_gamma[x]==2\n")
    dists = {
        "alpha": _Dist(tmp_path, "alpha", [400_000, 600_000], ["beta-gamma>=2", 'delta ; extra == "docs"']),
        "beta-gamma": _Dist(tmp_path, "beta", [2_000_000], ["alpha"]),
        "delta": _Dist(tmp_path, "delta", [7_000_000], []),
    }

    def distribution(name):
        key = name.lower().replace("_", "-")          # as importlib.metadata normalises names
        if key not in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return dists[key]
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(bench, "ROOT", app)
    out = bench.package_size()
    shipped = sum((app / f).stat().st_size for f in (".funcignore", "requirements.txt", "function_app.py",
                                                     "embedding_core/a.py"))
    assert out["app_mb"] == shipped / 1e6                 # MB, not MiB; nothing ignored counted
    assert out["dependencies_mb"] == 3.0                  # alpha + beta-gamma once; no extras
    assert out["total_mb"] == (shipped + 3_000_000) / 1e6


def test_package_size_fails_naming_a_requirement_that_applies_here_and_is_not_installed(
        monkeypatch, tmp_path):
    """A package requirements.txt names for this Python, missing from the environment, was
    skipped: dependencies_mb came out low with no note. What applies only elsewhere (another
    Python, another platform, an extra not asked for) is not looked for; an extra asked for is."""
    app = tmp_path / "app"
    app.mkdir()
    (app / ".funcignore").write_text("")
    dists = {"alpha": _Dist(tmp_path, "alpha", [1_000_000], [
        'winonly ; sys_platform == "no-such-platform"', 'docs ; extra == "docs"',
        'delta ; extra == "x"']), "delta": _Dist(tmp_path, "delta", [2_000_000], [])}

    def distribution(name):
        if name.lower() not in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return dists[name.lower()]
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(bench, "ROOT", app)

    def dependencies_mb(requirements: str) -> float:
        (app / "requirements.txt").write_text(requirements)
        return bench.package_size()["dependencies_mb"]
    with pytest.raises(RuntimeError, match=r'^package size: gone==2; python_version >= "3" '
                       r"\(required by requirements.txt\) applies on this Python but is not "
                       r"installed in "):
        dependencies_mb('alpha==1\ngone==2; python_version >= "3"\n')
    assert dependencies_mb('alpha==1\nold==1; python_version < "3"\n') == 1.0
    assert dependencies_mb("alpha[x]==1\n") == 3.0          # and delta, for the extra asked for
    # Comments as pip reads them: a whole line (indented too) or after white space.
    assert dependencies_mb("  # pinned\nalpha[x]==1  # and delta\n") == 3.0
    dists["alpha"].requires.append("needed>=1")              # a dependency of it, missing
    with pytest.raises(RuntimeError, match=r"^package size: needed>=1 \(required by alpha\) "):
        dependencies_mb("alpha==1\n")


def test_machine_records_the_simd_the_int8_kernels_depend_on_and_the_usable_cores(monkeypatch):
    cpuinfo = ("processor\t: 0\nmodel name\t: Test CPU\n"
               "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8\n\n"
               "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8\n")
    monkeypatch.setattr(bench, "open", lambda path, *a, **k: io.StringIO(cpuinfo) if path == "/proc/cpuinfo"
                        else open(path, *a, **k), raising=False)
    import embedding_core.settings as settings
    monkeypatch.setattr(settings, "usable_cores", lambda: 1)
    m = bench.machine()
    assert m["cpu"] == "Test CPU"
    assert m["simd"] == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]
    assert m["usable_cores"] == 1 and m["cores"] == os.cpu_count()
