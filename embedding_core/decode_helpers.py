"""Helper threads that decode a request's pictures beside the request's own thread.

A request's pictures are decoded on its own thread (``ImageModel.pixel_values``) before they
are queued for inference, and decoding is most of an image request's CPU: 8 camera-sized JPEGs
take ~210 ms to decode and ~40 ms to embed here. A lone request would leave every core but one
idle while it decodes, where its inference already uses them all (the queue splits a batch
between idle workers). So a request with several pictures also offers them to helper threads,
one fewer than the inference workers (``EMBEDDINGS_INFERENCE_WORKERS``, by default one per
usable core: none on one core), which take them one at a time, in request order:

* the request's thread always decodes too, so it never waits for a helper to be free;
* a helper takes one picture, then moves to the next offer in line, so the helpers take turns
  between the requests that offered pictures (a request makes up to ``helpers`` offers);
* results come back in request order, and the error is the first bad picture's in request
  order, as when one thread decodes them all. No picture is started once one has failed, and
  one already under way stops at its ``checkpoint()`` (``images.Checkpoint``: while it waits
  for room to decode, or once it has it) if one before it has failed, which the failed one
  tells (``checkpoint.failed()``) before it gives its room back: the request does not wait for
  pictures it will not use, nor do they keep their places in the decode budget's line;
* no picture starts, nor waits for room to decode, once the request's deadline has passed
  (``errors.DeadlinePassed``, which the request answers as timed out): its client has gone, or
  the server would answer 503 anyway;
* memory stays bounded by ``images.DECODE_GATE``, which every decode holds, whichever thread
  (and by ``memory.configure``: without it glibc's per-thread arenas keep what each helper
  freed, as they do long-lived request threads'). A failure is kept without its frames' locals
  (``errors.free_frames``) while the request's other pictures finish.

Pillow and numpy release the GIL while they decode, convert and resample, so the threads run
side by side. The threads start at the first request that has more than one picture; if one
cannot be started, the others serve (or the request's thread alone), and it is logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

from .errors import DeadlinePassed, free_frames
from .settings import Settings

log = logging.getLogger(__name__)


class Abandoned(Exception):
    """Raised by ``checkpoint()`` in a picture after a failed one: its result is not needed."""


def _check(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() >= deadline:
        raise DeadlinePassed()


class _Checkpoint:
    """Item ``i``'s ``images.Checkpoint``."""

    __slots__ = ("job", "i", "deadline")

    def __init__(self, job: "_Job", i: int):
        self.job, self.i, self.deadline = job, i, job.deadline

    def __call__(self) -> None:
        if self.job.first_failure < self.i:
            raise Abandoned(self.i)
        _check(self.deadline)

    def failed(self) -> None:
        self.job.failed(self.i)


class _NoCheckpoint:
    """One thread decodes everything, in order: only the deadline to keep."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def __call__(self) -> None:
        _check(self.deadline)

    def failed(self) -> None:
        return None


# fn(index, item, checkpoint) -> result (checkpoint: images.Checkpoint)
Decode = Callable[[int, Any, Any], Any]


class _Job:
    """One request's pictures: claimed one at a time, by index, by any thread. Outcomes are
    stored in lists allocated up front, so recording one cannot fail."""

    def __init__(self, fn: Decode, items: Sequence[Any], deadline: float | None = None):
        self.fn = fn
        self.items = items
        self.deadline = deadline
        self.results: list[Any] = [None] * len(items)    # a result, or the failure at i
        self.first_failure = len(items)                  # index of the first failed item
        self._next = 0
        self._running = 0
        self._cond = threading.Condition()

    def _claim(self) -> int | None:
        with self._cond:
            if self.first_failure < len(self.items) or self._next >= len(self.items):
                return None
            i = self._next
            self._next += 1
            self._running += 1
            return i

    def failed(self, i: int) -> None:
        """Item ``i`` has failed (told as soon as it knows): no more claims, and the items
        after it give up at their checkpoints."""
        with self._cond:
            if i < self.first_failure:
                self.first_failure = i

    def run_one(self) -> bool:
        """Decode the next picture, if any is left; whether one was."""
        i = self._claim()
        if i is None:
            return False
        failed = False
        try:
            _check(self.deadline)
            outcome = self.fn(i, self.items[i], _Checkpoint(self, i))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the request's thread
            free_frames(exc)          # the failed picture goes now, not when the request ends
            outcome, failed = exc, True
        with self._cond:              # finish() reads nothing before this item is counted out
            self.results[i] = outcome
            if failed and i < self.first_failure:
                self.first_failure = i
            self._running -= 1
            self._cond.notify_all()
        return True

    def more(self) -> bool:
        with self._cond:
            return self.first_failure == len(self.items) and self._next < len(self.items)

    def abandon(self) -> None:
        """No more claims (the request's thread is leaving without its results)."""
        with self._cond:
            self.first_failure = -1

    def finish(self) -> list[Any]:
        """Wait for the pictures other threads are decoding; the results, or the first error."""
        with self._cond:
            while self._running:
                self._cond.wait()
            results, first = self.results, self.first_failure
            # A helper may still hold this job in its line: keep nothing of the request's.
            self.items, self.results, self.first_failure = (), [], -1
        if 0 <= first < len(results):
            raise results[first]
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
            self._started = True
            wanted, self.threads = self.threads, 0
            for n in range(wanted):
                try:
                    threading.Thread(target=self._help, name=f"decode-helper-{n}",
                                     daemon=True).start()
                except RuntimeError as exc:    # "can't start new thread": a pids limit, say
                    log.warning("started %d of %d image decode helper threads: %s", n, wanted, exc)
                    break
                self.threads += 1

    def _help(self) -> None:
        while True:
            job = self._offers.get()
            try:
                # One picture, then the offer goes to the back of the line if there are more:
                # the helpers take turns among the requests that offered pictures.
                if job.run_one() and job.more():
                    self._offers.put(job)
            except BaseException:  # noqa: BLE001 - a helper must outlive any one request
                log.exception("image decode helper")
            del job

    def map(self, fn: Decode, items: Sequence[Any],
            deadline: float | None = None) -> list[Any]:
        """``[fn(i, item, checkpoint) for i, item in enumerate(items)]``, with the helpers'
        help; raises the first failure in item order (``DeadlinePassed`` for the first item
        not started, or given up waiting for room, once ``deadline`` has passed)."""
        if len(items) > 1 and self.threads:
            self._start()
        if self.threads == 0 or len(items) < 2:
            checkpoint = _NoCheckpoint(deadline)
            results = []
            for i, item in enumerate(items):
                _check(deadline)
                results.append(fn(i, item, checkpoint))
            return results
        job = _Job(fn, items, deadline)
        for _ in range(min(self.threads, len(items) - 1)):
            self._offers.put(job)
        try:
            while job.run_one():
                pass
        except BaseException:
            job.abandon()
            raise
        return job.finish()


_HELPERS: DecodeHelpers | None = None
_HELPERS_LOCK = threading.Lock()


def helper_count(settings: Settings) -> int:
    """One fewer than the inference workers (``Settings.workers``: by default one per usable
    core), so ``EMBEDDINGS_INFERENCE_WORKERS=1`` or one core means none."""
    return max(0, settings.workers - 1)


def helpers(settings: Settings) -> DecodeHelpers:
    """The process's helpers, sized by the settings of the first image request."""
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None:
            _HELPERS = DecodeHelpers(helper_count(settings))
        return _HELPERS
