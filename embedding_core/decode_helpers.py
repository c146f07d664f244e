"""Helper threads that decode a request's pictures beside the request's own thread.

A request's pictures are decoded on its own thread (``ImageModel.pixel_values``) before they
are queued for inference, and decoding is most of an image request's CPU: 8 camera-sized JPEGs
take ~215 ms to decode and ~46 ms to embed here. A lone request would leave every core but one
idle while it decodes, where its inference already uses them all (the queue splits a batch
between idle workers). So a request with several pictures also offers them to ``cores - 1``
helper threads (none on one core), which take them one at a time, in request order:

* the request's thread always decodes too, so it never waits for a helper to be free;
* the helpers take one picture at a time from the requests that offered theirs, in turn, so a
  large request does not keep a smaller one waiting for a helper;
* results come back in request order, and the error is the first bad picture's in request
  order, as when one thread decodes them all (pictures after a failed one are not started);
* memory stays bounded by ``images.DECODE_GATE``, which every decode holds, whichever thread
  (and by ``memory.configure``: without it glibc's per-thread arenas keep what each helper
  freed, as they do long-lived request threads').

Pillow and numpy release the GIL while they decode, convert and resample, so the threads run
side by side. The threads start at the first request that has more than one picture.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Sequence

from .settings import MAX_INFERENCE_WORKERS, usable_cores


class _Job:
    """One request's pictures: claimed one at a time, by index, by any thread."""

    def __init__(self, fn: Callable[[int, Any], Any], items: Sequence[Any]):
        self.fn = fn
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.failures: dict[int, BaseException] = {}
        self._next = 0
        self._running = 0
        self._cond = threading.Condition()

    def _claim(self) -> int | None:
        with self._cond:
            if self.failures or self._next >= len(self.items):
                return None       # every picture before a failed one is claimed already
            i = self._next
            self._next += 1
            self._running += 1
            return i

    def run_one(self) -> bool:
        """Decode the next picture, if any is left; whether one was."""
        i = self._claim()
        if i is None:
            return False
        try:
            self.results[i] = self.fn(i, self.items[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised by the request's thread
            with self._cond:
                self.failures[i] = exc
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
        return True

    def more(self) -> bool:
        with self._cond:
            return not self.failures and self._next < len(self.items)

    def finish(self) -> list[Any]:
        """Wait for the pictures other threads are decoding; the results, or the first error."""
        with self._cond:
            while self._running:
                self._cond.wait()
            results, failures = self.results, self.failures
            # A helper may still hold this job in its line: keep nothing of the request's.
            self.items, self.results, self.failures = (), [], {}
        if failures:
            raise failures[min(failures)]
        return results


class DecodeHelpers:
    """``threads`` helper threads shared by every request of the process (started lazily)."""

    def __init__(self, threads: int):
        self.threads = max(0, threads)
        self._offers: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for n in range(self.threads):
                threading.Thread(target=self._help, name=f"decode-helper-{n}", daemon=True).start()
            self._started = True

    def _help(self) -> None:
        while True:
            job = self._offers.get()
            # One picture, then the job goes to the back of the line if it has more: the
            # helpers take turns among the requests that offered pictures.
            if job.run_one() and job.more():
                self._offers.put(job)

    def map(self, fn: Callable[[int, Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(i, item) for i, item in enumerate(items)]``, with the helpers' help; raises
        the first failure in item order."""
        if self.threads == 0 or len(items) < 2:
            return [fn(i, item) for i, item in enumerate(items)]
        self._start()
        job = _Job(fn, items)
        for _ in range(min(self.threads, len(items) - 1)):
            self._offers.put(job)
        while job.run_one():
            pass
        return job.finish()


_HELPERS: DecodeHelpers | None = None
_HELPERS_LOCK = threading.Lock()


def helpers() -> DecodeHelpers:
    """The process's helpers: one fewer than its usable cores (``settings.usable_cores``),
    counted at the first image request."""
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None:
            _HELPERS = DecodeHelpers(min(usable_cores(), MAX_INFERENCE_WORKERS) - 1)
        return _HELPERS
