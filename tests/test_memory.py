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
