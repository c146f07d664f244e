"""Process memory: hand freed memory back to the system, so RSS falls when traffic does.

Why (bench/soak.py, docs/images.md "Memory"): with glibc's defaults RSS climbed after bursts
and stayed there. Three mechanisms keep freed memory in the process:

* **Arenas.** glibc gives each thread that allocates its own arena, up to 8 per core; the local
  host serves each connection on a new thread and the Functions worker runs requests on a thread
  pool, so a burst spreads allocations over many arenas (17 seen after a soak on 2 cores). Memory
  freed inside an arena's heap is kept for that arena, and only its top can be trimmed.
* **The dynamic mmap threshold.** Blocks over 128 KiB start out mmapped (returned on free), but
  every free of such a block raises the threshold to its size, up to 32 MiB: after the first
  large image or batch, numpy arrays, Pillow's image blocks and tokenizer buffers of up to
  32 MiB come from the arenas instead and stay there, fragmented.
* **No trimming.** Free pages inside the arenas are only returned by ``malloc_trim``.

* **onnxruntime's CPU arena** keeps the buffers of the largest run for the session's life
  (~170 MiB after image batches). Turning it off costs 5-65 % more CPU per text run, the more the
  larger the run (measured: with the mmap threshold below, each large buffer is mapped anew),
  so it stays on and is shrunk when idle instead.

What :func:`configure` does, once per process, when the service is built (glibc only; elsewhere,
e.g. musl or macOS, it does nothing): ``mallopt(M_ARENA_MAX, EMBEDDINGS_MALLOC_ARENA_MAX)`` (2),
``mallopt(M_MMAP_THRESHOLD, EMBEDDINGS_MALLOC_MMAP_THRESHOLD)`` (1 MiB, fixed, so larger blocks
are always mmapped and given back on free), and a daemon thread that, once the process has had no request in flight
for ``EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS`` (1 s), runs the :func:`on_idle` hooks (each
onnxruntime session: one tiny inference with arena shrinkage; the OpenVINO long-input model:
``release_memory``) and ``malloc_trim(0)``.
:func:`request` brackets each request so the thread knows when the process is idle.
``EMBEDDINGS_MEMORY_TUNING=off`` turns all of it off (the soak compares both).

Measured (bench/soak.py, 3 cycles of 40 s bursts of mixed traffic, 8 clients, then 10 s idle;
RSS after idle): defaults 554-573 MiB (17 arena heaps holding 305 MiB, ~150 MiB more in
onnxruntime's arenas); everything on 208-210 MiB (2 heaps, 71 MiB); on but glibc's 8 arenas per
core 208-209 MiB (trimming frees them too); on but glibc's dynamic mmap threshold 212-215 MiB; on
but never idle-trimmed (no arena shrink, no malloc_trim) 393-396 MiB. Peak RSS: 646 MiB with the
defaults, 472 MiB tuned. Throughput: no difference measurable on the shared 2-core machine (the
request count of identical soak runs varied by +-25 %; in-process, 8 threads of mixed requests
took 53-63 s of CPU either way).

Arenas created before :func:`configure` runs (the Functions worker's own threads) are kept; the
app setting ``MALLOC_ARENA_MAX=2`` applies from process start if that matters.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20


def _glibc():
    """libc when it is glibc (has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError, TypeError):
        return None


_libc = _glibc()
_lock = threading.Lock()
_configured: dict | None = None
_trimmer: "_IdleTrimmer | None" = None
_idle_hooks: list[Callable[[], object]] = []


class _Owned:
    """An idle hook for ``owner``, held weakly: ``hook(owner)`` while it lives; once it is gone
    the hook does nothing and is dropped at the next idle period."""

    def __init__(self, owner: object, hook: Callable[[Any], object]):
        self.owner = weakref.ref(owner)
        self.hook = hook

    def __call__(self) -> None:
        live = self.owner()
        if live is not None:
            self.hook(live)


def on_idle(hook: Callable[..., object], owner: object = None) -> None:
    """Run ``hook`` each time the process goes idle, before ``malloc_trim`` (onnxruntime sessions
    register a tiny inference that shrinks their arena, see onnx_session.py). With ``owner``,
    ``hook(owner)`` while ``owner`` lives: the hook never keeps it alive (a session's buffers),
    and is removed once it is gone."""
    with _lock:
        _idle_hooks.append(hook if owner is None else _Owned(owner, hook))


def _run_idle_hooks(stopping: Callable[[], bool] = lambda: False) -> None:
    with _lock:
        _idle_hooks[:] = [h for h in _idle_hooks
                          if not (isinstance(h, _Owned) and h.owner() is None)]
        hooks = list(_idle_hooks)
    for hook in hooks:
        if stopping():
            return
        try:
            hook()
        except Exception:  # noqa: BLE001 - giving memory back must never break serving
            log.exception("idle memory hook failed")


def available() -> bool:
    return _libc is not None


def trim() -> bool:
    """``malloc_trim(0)``: give free pages of every arena back to the system. True if any was."""
    return bool(_libc.malloc_trim(0)) if _libc is not None else False


class _IdleTrimmer:
    """Trims once per quiet period: after ``idle_s`` with no request in flight.

    Stopped and joined at interpreter exit (:func:`_stop_trimmer`), like the inference queue's
    workers: the hooks run inside ONNX Runtime, and a daemon thread torn down there aborts the
    process ("terminate called without an active exception", exit code 134) - measured 3 of 3
    times with an exit during the hook's inference, before this was added."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        self.cond = threading.Condition()
        self.in_flight = 0
        self.last_end = 0.0
        self.dirty = False                  # a request ran since the last trim
        self.stopping = False
        self.trims = 0
        self.thread = threading.Thread(target=self._run, name="memory-trim", daemon=True)
        self.thread.start()

    def begin(self) -> None:
        with self.cond:
            self.in_flight += 1
            self.dirty = True

    def end(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.last_end = time.monotonic()
            if not self.in_flight:
                self.cond.notify()

    def stop(self, timeout: float) -> None:
        """Let a hook that is running finish, start no other, and wait for the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not (self.dirty and not self.in_flight):
                    self.cond.wait()
                if self.stopping:
                    return
                wait = self.last_end + self.idle_s - time.monotonic()
                if wait > 0:
                    self.cond.wait(wait)
                    continue                # re-check: a request may have started meanwhile
                self.dirty = False
            _run_idle_hooks(lambda: self.stopping)
            if self.stopping:
                return
            trim()
            self.trims += 1


@atexit.register
def _stop_trimmer(timeout: float = 10.0) -> None:
    if _trimmer is not None:
        _trimmer.stop(timeout)


def configure(enabled: bool = True, arena_max: int = 2, trim_idle_s: float = 1.0,
              mmap_threshold: int = MMAP_THRESHOLD) -> dict:
    """Apply the process memory settings once (later calls return what the first applied).
    ``arena_max`` 0 and ``mmap_threshold`` 0 leave glibc's own behaviour for that part."""
    global _configured, _trimmer
    with _lock:
        if _configured is not None:
            return _configured
        if not enabled or _libc is None:
            _configured = {"tuning": "off" if not enabled else "unavailable (not glibc)"}
        else:
            if arena_max > 0:
                _libc.mallopt(M_ARENA_MAX, arena_max)
            if mmap_threshold > 0:
                _libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
            if trim_idle_s > 0:
                _trimmer = _IdleTrimmer(trim_idle_s)
            _configured = {"tuning": "on", "arena_max": arena_max,
                           "mmap_threshold": mmap_threshold, "trim_idle_s": trim_idle_s}
        log.info("process memory: %s", _configured)
        return _configured


@contextmanager
def request() -> Iterator[None]:
    """Bracket one request (the idle trimmer counts requests in flight)."""
    trimmer = _trimmer
    if trimmer is None:
        yield
        return
    trimmer.begin()
    try:
        yield
    finally:
        trimmer.end()
