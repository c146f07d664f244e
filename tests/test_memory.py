"""embedding_core/memory.py: freed memory goes back to the system once the process is idle."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from embedding_core import memory
from embedding_core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Eight threads each serve 25 "requests": a few temporaries of 64 KiB to 12 MiB (like numpy
# arrays and Pillow blocks) that are freed at the end, and a small object that stays alive (so
# an arena cannot simply shrink from its top). glibc's dynamic mmap threshold rises with the
# first large free, after which the temporaries come from the arenas.
CHILD = r"""
import json, random, sys, threading, time
from embedding_core import memory
memory.configure(sys.argv[1] == "on", 2, 0.3)

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

base = rss()
kept = []
peak = [0.0]

def work(seed):
    rng = random.Random(seed)
    for _ in range(25):
        with memory.request():
            temps = [bytearray(rng.choice((64, 300, 900, 3000, 12000)) << 10) for _ in range(4)]
            kept.append(bytearray(rng.choice((200, 5000, 40000))))
            peak[0] = max(peak[0], rss())
            del temps

threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
busy = rss()
time.sleep(1.0)
print(json.dumps({"base": base, "peak": peak[0], "busy": busy, "idle": rss()}))
"""


def _run(mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not memory.available(), reason="glibc only (elsewhere memory.py does nothing)")
def test_freed_memory_is_given_back_when_idle():
    off, on = _run("off"), _run("on")
    assert off["peak"] - off["base"] > 100 and on["peak"] - on["base"] > 100, (off, on)
    # glibc's defaults keep what the arenas grew to (as the soak showed); tuned, it goes back.
    assert off["idle"] - off["base"] > 100, off
    assert on["idle"] - on["base"] < 30, on


def test_the_idle_trimmer_trims_once_per_quiet_period(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(time.monotonic()) or True)
    trimmer = memory._IdleTrimmer(0.2)
    trimmer.begin()
    time.sleep(0.4)
    assert calls == []                     # never while a request is in flight
    trimmer.end()
    ended = time.monotonic()
    deadline = ended + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 1 and calls[0] - ended >= 0.19
    time.sleep(0.5)
    assert len(calls) == 1                 # nothing ran since: no second trim
    trimmer.begin()
    trimmer.end()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 2


# The process exits while the idle trimmer is inside an ONNX Runtime run: the arena-shrinking
# hook of the int8 text model, fed 48 x 256 tokens instead of its tiny input so that the exit
# surely lands inside the run (the real hook's run lasts 5-8 ms).
EXIT_DURING_HOOK = r"""
import sys, threading, time
import numpy as np
from embedding_core import memory
from embedding_core.onnx_session import create_session, release_arena_when_idle
from embedding_core.settings import Settings

s = Settings.from_env({})
session = create_session("embedding_core/models/all-MiniLM-L6-v2/model.onnx", s)
ids = np.full((48, 256), 1000, np.int64)
feeds = {i.name: ids if i.name == "input_ids" else np.ones_like(ids)
         if i.name == "attention_mask" else np.zeros_like(ids) for i in session.get_inputs()}
started = threading.Event()
memory.on_idle(started.set)
release_arena_when_idle(session, feeds, s)
memory.configure(True, 2, 0.05)
with memory.request():
    pass
assert started.wait(10)
time.sleep(0.02)
print("exiting during the hook", flush=True)
"""


@pytest.mark.skipif(not memory.available(), reason="glibc only (elsewhere memory.py does nothing)")
def test_the_process_exits_cleanly_while_an_idle_hook_runs():
    # Before the trimmer was stopped and joined at exit, its daemon thread was torn down inside
    # ONNX Runtime: "terminate called without an active exception", exit code 134, 3 of 3 runs.
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", EXIT_DURING_HOOK], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert "exiting during the hook" in res.stdout, res.stderr[-2000:]
        assert res.returncode == 0 and "terminate called" not in res.stderr, res.stderr[-2000:]


def test_stopping_the_trimmer_runs_no_further_hook(monkeypatch):
    trimmer = memory._IdleTrimmer(0.05)
    ran, release = [], threading.Event()

    def slow():
        ran.append("slow")
        trimmer.stop(0)             # exit begins while this hook runs ...
        release.wait(5)

    monkeypatch.setattr(memory, "_idle_hooks", [slow, lambda: ran.append("next")])
    monkeypatch.setattr(memory, "trim", lambda: ran.append("trim") or True)
    trimmer.begin()
    trimmer.end()
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    trimmer.thread.join(5)
    assert not trimmer.thread.is_alive()
    assert ran == ["slow"]          # ... so neither the next hook nor malloc_trim runs


def test_without_glibc_everything_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "_libc", None)
    monkeypatch.setattr(memory, "_configured", None)
    monkeypatch.setattr(memory, "_trimmer", None)
    assert memory.configure(True, 2, 1.0) == {"tuning": "unavailable (not glibc)"}
    assert memory.trim() is False
    with memory.request():
        pass


def test_settings():
    s = Settings.from_env({})
    assert (s.memory_tuning, s.malloc_arena_max, s.memory_trim_idle_s, s.ort_cpu_mem_arena) == \
        (True, 2, 1.0, True)
    s = Settings.from_env({"EMBEDDINGS_MEMORY_TUNING": "off", "EMBEDDINGS_MALLOC_ARENA_MAX": "0",
                           "EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS": "0",
                           "EMBEDDINGS_ORT_CPU_MEM_ARENA": "false"})
    assert (s.memory_tuning, s.malloc_arena_max, s.memory_trim_idle_s, s.ort_cpu_mem_arena) == \
        (False, 0, 0.0, False)
    with pytest.raises(ValueError, match="EMBEDDINGS_MEMORY_TUNING"):
        Settings.from_env({"EMBEDDINGS_MEMORY_TUNING": "maybe"})


@pytest.mark.parametrize("raw, value", [("yes", True), ("No", False), ("TRUE", True),
                                        (" Off ", False), ("1", True), ("0", False)])
def test_switch_settings_read_every_spelling_of_on_and_off(raw, value):
    s = Settings.from_env({"EMBEDDINGS_MEMORY_TUNING": raw, "EMBEDDINGS_ORT_CPU_MEM_ARENA": raw,
                           "EMBEDDINGS_ORT_SPINNING": raw})
    assert (s.memory_tuning, s.ort_cpu_mem_arena, s.ort_spinning) == (value, value, value)


def test_a_refused_switch_is_quoted_as_written():
    with pytest.raises(ValueError, match="EMBEDDINGS_ORT_SPINNING must be true or false, "
                                         "got 'Maybe'"):
        Settings.from_env({"EMBEDDINGS_ORT_SPINNING": " Maybe "})


class _RecordingLibc:
    """A libc whose mallopt and malloc_trim only record: the test process's allocator is left
    as it is."""
    def __init__(self):
        self.mallopt_calls = []

    def mallopt(self, param, value):
        self.mallopt_calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        return 0


@pytest.fixture
def fresh_memory(monkeypatch):
    """memory.configure as in a new process, with a libc that only records its calls."""
    libc = _RecordingLibc()
    monkeypatch.setattr(memory, "_libc", libc)
    monkeypatch.setattr(memory, "_configured", None)
    monkeypatch.setattr(memory, "_trimmer", None)
    yield libc
    if memory._trimmer is not None:
        memory._trimmer.stop(5)


def test_a_trim_idle_time_of_zero_never_trims(fresh_memory):
    """EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS=0: never trim (no trimmer thread at all)."""
    before = set(threading.enumerate())
    assert memory.configure(True, 2, 0.0) == {"tuning": "on", "arena_max": 2,
                                              "mmap_threshold": memory.MMAP_THRESHOLD,
                                              "trim_idle_s": 0.0}
    assert memory._trimmer is None
    assert [t for t in set(threading.enumerate()) - before if t.name == "memory-trim"] == []


def test_configure_applies_once_per_process(fresh_memory):
    """A second configure (a service built again) changes nothing and starts no second
    trimmer: it returns what the first applied."""
    first = memory.configure(True, 2, 30.0)
    trimmer = memory._trimmer
    assert memory.configure(True, 4, 5.0, 1 << 16) == first
    assert memory._trimmer is trimmer
    assert fresh_memory.mallopt_calls == [(memory.M_ARENA_MAX, 2),
                                          (memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD)]


def test_a_failing_idle_hook_does_not_stop_the_trimming(monkeypatch, caplog):
    """A hook that raises is logged; the trimmer keeps trimming after later quiet periods."""
    trims = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)
    monkeypatch.setattr(memory, "_idle_hooks", [lambda: 1 / 0])
    trimmer = memory._IdleTrimmer(0.05)
    try:
        for n in (1, 2):
            trimmer.begin()
            trimmer.end()
            deadline = time.monotonic() + 10
            while len(trims) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(trims) == n
        assert trimmer.thread.is_alive()
        assert "idle memory hook failed" in caplog.text
    finally:
        trimmer.stop(5)


MINILM = ROOT / "embedding_core/models/all-MiniLM-L6-v2/model.onnx"


@pytest.mark.parametrize("env, hooked", [
    ({}, True),
    ({"EMBEDDINGS_ORT_CPU_MEM_ARENA": "false"}, False),      # no arena to shrink
    ({"EMBEDDINGS_MEMORY_TUNING": "off"}, False),            # tuning off: nothing on idle
])
def test_the_arena_shrinking_hook_follows_the_settings_and_never_keeps_a_session(monkeypatch, env,
                                                                                hooked):
    import gc
    import weakref

    import numpy as np

    from embedding_core.onnx_session import create_session, release_arena_when_idle

    monkeypatch.setattr(memory, "_idle_hooks", [])
    settings = Settings.from_env({**env, "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"})
    session = create_session(MINILM, settings)
    ids = np.ones((1, 4), np.int64)
    feeds = {i.name: ids if i.name != "token_type_ids" else np.zeros_like(ids)
             for i in session.get_inputs()}
    release_arena_when_idle(session, feeds, settings)
    assert len(memory._idle_hooks) == (1 if hooked else 0)
    if hooked:
        memory._idle_hooks[0]()                # the tiny run with arena shrinkage works
        gone = weakref.ref(session)
        del session
        gc.collect()
        assert gone() is None                  # the hook does not keep a discarded session
        memory._idle_hooks[0]()                # ... and then does nothing
        memory._run_idle_hooks()               # ... and is gone after the next idle period
        assert memory._idle_hooks == []
