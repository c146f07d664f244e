"""Micro-batching under a token budget, and the per-process bound on concurrent inference."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from . import errors


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[np.ndarray]:
    """Group input indices into micro-batches, shortest first.

    Inputs are sorted by length so each batch pads little; a batch grows while
    ``len(batch) * longest_in_batch <= token_budget`` and ``len(batch) <= max_batch_size``.
    An input longer than the budget runs alone. Memory is bounded by the budget, not by the
    request size. Returns arrays of original indices.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # Sorted ascending, so the last member is the longest: padded size = count * lengths[end].
        while (end < n and end - start < max_batch_size
               and (end - start + 1) * lengths[order[end]] <= token_budget):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class ConcurrencyLimiter:
    """At most ``max_active`` inferences at once; at most ``max_waiting`` callers queue.

    A caller beyond the queue, or one that waited ``timeout_s``, gets 429 with ``Retry-After``
    rather than a time-out.
    """

    def __init__(self, max_active: int, max_waiting: int, timeout_s: float, retry_after_s: int):
        self._sem = threading.BoundedSemaphore(max_active)
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    @contextmanager
    def slot(self) -> Iterator[float]:
        """Hold an inference slot; yields the seconds spent waiting for it."""
        t0 = time.perf_counter()
        # A newcomer takes a free slot only when nobody is waiting (no overtaking the queue).
        if self._waiting or not self._sem.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.max_waiting:
                    raise errors.too_many_requests(self.retry_after_s)
                self._waiting += 1
            try:
                acquired = self._sem.acquire(timeout=self.timeout_s)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not acquired:
                raise errors.too_many_requests(self.retry_after_s)
        try:
            yield time.perf_counter() - t0
        finally:
            self._sem.release()
