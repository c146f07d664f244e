"""bench/one_core.py and bench/small_runs.py (not part of `make bench`; their results are cited in
docs/benchmarks.md): the singles-ratio placements of one_core, and the runs small_runs times.
Stand-ins replace the server and the clients, so nothing is measured."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
import one_core  # noqa: E402
import small_runs  # noqa: E402
from embedding_core.text import length_groups  # noqa: E402


def test_one_core_singles_places_the_clients_and_divides_singles_by_batched(monkeypatch):
    class Server:
        def __init__(self, env=None, cpus=None):
            self.cpus = cpus

        def conn(self):
            return type("C", (), {"close": lambda self: None})()

        def post(self, conn, path, body):
            return b"{}"

        def stop(self):
            pass
    calls = []
    times = iter([1.0, 0.5, 2.0, 0.5, 4.0, 0.5, 1.0, 0.5])      # per call: seconds taken

    def run_clients(server, path, bodies, clients, send=None, cpus=None):
        calls.append((server.cpus, clients, cpus, [len(b["input"]) for b in bodies]))
        return next(times)
    monkeypatch.setattr(bench, "Server", Server)
    monkeypatch.setattr(bench, "run_clients", run_clients)
    w = {"short": [f"sentence {i}" for i in range(64)]}
    out = one_core.singles(w, 0, 1, rounds=2)
    # per round: 8 one-sentence clients, then 2 clients of 32, with the clients on the server's
    # core, then on the other one; the server on core 0 throughout
    assert calls == [({0}, 8, {0}, [1] * 64), ({0}, 2, {0}, [32, 32]),
                     ({0}, 8, {1}, [1] * 64), ({0}, 2, {1}, [32, 32])] * 2
    same, other = out["clients on the same core"], out["clients on another core"]
    assert [r["ratio"] for r in same["rounds"]] == [0.5, 0.125]          # singles/s over batched/s
    assert [r["ratio"] for r in other["rounds"]] == [0.25, 0.5]
    assert same["median_ratio"] == 0.3125 and other["median_ratio"] == 0.375


def test_small_runs_cover_every_sentence_in_length_groups_of_each_batch():
    ids = [[1] * n for n in (5, 30, 7, 12, 40, 9, 3, 22, 18)]
    for batch in (1, 2, 4, 8, 32):
        plan = small_runs.runs(ids, batch)
        assert sorted(map(len, (x for r in plan for x in r))) == sorted(map(len, ids)), batch
        i = 0
        for start in range(0, len(ids), batch):        # each batch's runs: its sentences, sorted
            b = sorted(ids[start:start + batch], key=len)
            groups = [b[lo:hi] for lo, hi in length_groups([len(x) for x in b])]
            assert plan[i:i + len(groups)] == groups
            i += len(groups)
        assert i == len(plan)


def test_small_runs_feeds_the_model_as_the_app_does():
    """Each run is padded with zeros to its longest sentence, and the padding is masked out (the
    app's feeds): a run that attended its padding would time another computation."""
    fed = []

    class Session:
        def run(self, outputs, feeds):
            fed.append((outputs, {k: v.copy() for k, v in feeds.items()}))
    small_runs.run(Session(), [[101, 7, 102], [101, 5, 6, 8, 102]])
    (outputs, feeds), = fed
    assert outputs == ["sentence_embedding"]
    assert feeds["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 5, 6, 8, 102]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert not feeds["token_type_ids"].any()


def test_small_runs_sessions_run_on_one_thread_with_memory_patterns_as_named():
    for on in (True, False):
        opts = small_runs.session(on).get_session_options()
        assert opts.enable_mem_pattern is on
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)


def test_one_core_in_process_refuses_to_time_an_error_answer(monkeypatch):
    """The in-process singles loads call function_app directly: a 4xx answer (here an empty
    input list) is an error of the run, not a request served and timed."""
    import pytest

    from conftest import process_service

    with process_service(monkeypatch):     # its key and service are dropped afterwards
        run = one_core.in_process_clients()
        with pytest.raises(RuntimeError, match="^422: .*at least one item"):
            run([{"input": []}], 1)


def test_one_core_runs_fairness_and_the_largest_request_pinned_to_its_cpu(monkeypatch, tmp_path):
    """Catches the fairness and largest-request runs left on every CPU, not the one core."""
    import json
    import os

    affinity = {3, 5}                          # the CPUs this process may use (none really pinned)
    pinned = []

    def sched_setaffinity(pid, cpus):
        affinity.clear()
        affinity.update(cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(affinity))
    monkeypatch.setattr(os, "sched_setaffinity", sched_setaffinity)
    monkeypatch.setattr(one_core.workloads, "build", lambda *a: {"short": [], "longest": []})
    monkeypatch.setattr(bench, "machine", lambda: {})
    monkeypatch.setattr(bench, "fairness", lambda *a: pinned.append(set(affinity)) or {})
    monkeypatch.setattr(bench, "largest_request", lambda w: pinned.append(set(affinity)) or {})
    monkeypatch.setattr(sys, "argv", ["one_core.py", "--singles-rounds", "0",
                                      "--out", str(tmp_path / "one-core.json")])
    one_core.main()
    assert json.loads((tmp_path / "one-core.json").read_text())["cpu"] == 3
    assert pinned == [{3}, {3}, {3}]            # the two fairness runs, then the largest request


def test_small_runs_reports_ms_per_sentence_not_per_run(monkeypatch, tmp_path):
    """Catches the thread time of a batch size divided by its runs instead of its sentences."""
    import json
    import time
    import types

    import pytest

    clock = [0.0]

    def run(sess, rows):                        # 1 ms of thread CPU per sentence, whatever the run
        clock[0] += 1e-3 * len(rows)
    monkeypatch.setattr(small_runs, "run", run)
    monkeypatch.setattr(small_runs, "session", lambda mem_pattern: object())
    monkeypatch.setattr(small_runs, "time", types.SimpleNamespace(
        thread_time=lambda: clock[0], strftime=time.strftime, gmtime=time.gmtime))
    monkeypatch.setattr(small_runs.workloads, "build",           # 5 tokens each: a batch, a run
                        lambda *a: {"short": [f"sentence number {i}" for i in range(40)]})
    monkeypatch.setattr(bench, "machine", lambda: {})
    monkeypatch.setattr(sys, "argv", ["small_runs.py", "--repeats", "2",
                                      "--out", str(tmp_path / "small-runs.json")])
    small_runs.main()
    out = json.loads((tmp_path / "small-runs.json").read_text())
    assert out["runs_per_batch_size"] == {"1": 40, "2": 20, "4": 10, "8": 5, "32": 2}
    for name, by_batch in out["ms_per_sentence"].items():
        assert by_batch == {b: [pytest.approx(1.0)] * 2 for b in ("1", "2", "4", "8", "32")}, name
