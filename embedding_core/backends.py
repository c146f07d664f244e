"""What a model backend is: small Protocols, implemented once per kind of model.

A request's inference is split in two, like text-embeddings-inference's router and backends:

* **prepare** (in the request's own thread): validate the backend's extras, tokenise text,
  decode images. The result is a :class:`Prepared`: one :class:`Work` per :class:`Lane` the
  request needs (items with a cost each), and a ``finish`` function that turns the lanes' raw
  output rows back into the request's vectors.
* **run** (in the inference queue's one worker thread): a :class:`Lane` runs one micro-batch of
  payloads, possibly from several requests, and returns one output row per payload. Lanes never
  see requests; the queue (``inference_queue.py``) decides what runs together.

Everything around it (wire dialects, auth, dimensions, encodings, HTTP) is the same for every
backend and lives elsewhere.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray      # float32 [n, native_dimensions], each row L2-normalised
    prompt_tokens: int       # what `usage.prompt_tokens` reports for the whole request


class Lane(Protocol):
    """Something that runs micro-batches of one model output.

    Items of lanes with equal ``key`` may share a batch. A batch of ``n`` items whose largest
    cost is ``c`` fits when ``n <= max_batch_items`` and ``n * c <= batch_budget`` (a single item
    always fits). ``unit`` names what a cost counts ("tokens" or "images"); the queue bounds
    queued cost per unit.
    """

    key: Hashable
    unit: str
    max_batch_items: int
    batch_budget: int

    def run(self, payloads: Sequence[Any], requests: int = 1) -> np.ndarray:
        """One output row per payload, in order. ``requests``: how many requests have items in
        this batch (a lane may use it to choose how to run; the rows must not depend on it)."""


@dataclass
class Work:
    """The items one request needs run on one lane."""

    lane: Lane
    payloads: Sequence[Any]
    costs: Sequence[int]


@dataclass
class Prepared:
    """A request made ready for inference: the work per lane, and how to finish it."""

    work: list[Work]
    finish: Callable[[list[np.ndarray]], Encoded]   # outputs per Work (rows in payload order)
    inputs: int = 0                                  # inputs in the request (for telemetry)
    images: int = 0                                  # images among them

    def cost(self, unit: str) -> int:
        return sum(int(sum(w.costs)) for w in self.work if w.lane.unit == unit)


class Backend(Protocol):
    def check_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """Validate pass-through extras; return the ones this backend uses (normalised).

        Unknown names or bad values raise ``errors.unsupported_parameter`` (422) with the
        field name as target.
        """

    def prepare(self, inputs: Sequence[Any], *, input_type: str,
                extras: dict[str, Any], deadline: float | None = None) -> Prepared:
        """Tokenise/decode ``inputs`` (already schema-validated for the route).

        Text route inputs are ``str`` or ``list[int]`` (token ids). Image route inputs are
        ``ImageInput``. Per-item problems raise ``ApiError`` whose target is ``input[i]`` (or a
        sub-path such as ``input[i].image``). ``deadline`` (``time.perf_counter()``): once it
        has passed, no picture starts decoding, nor waits for room to, and
        ``errors.DeadlinePassed`` is raised.
        """

    def encode(self, inputs: Sequence[Any], *, input_type: str = "text",
               extras: dict[str, Any] | None = None) -> Encoded:
        """``prepare`` and run it right here, without the queue (scripts, tests)."""

    def loaded(self) -> bool:
        """True once the model is in memory (never triggers loading)."""


_one_off = threading.local()


@contextlib.contextmanager
def one_off() -> Iterator[None]:
    """Marks one-off work a lane does inside ``run`` (creating a session on first use, compiling
    a model, waiting for another thread doing so): the queue leaves a batch that did any out of
    the throughput it measures, or the first batch after a cold start would make every estimate
    (admission, Retry-After) ten times too long for the next twenty batches."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _one_off.seconds = getattr(_one_off, "seconds", 0.0) + time.perf_counter() - start


def take_one_off_seconds() -> float:
    """Seconds of :func:`one_off` work in this thread since the last call (and reset)."""
    seconds = getattr(_one_off, "seconds", 0.0)
    _one_off.seconds = 0.0
    return seconds


def fits(lane: Lane, count: int, max_cost: int) -> bool:
    """Whether ``count`` items whose largest cost is ``max_cost`` fit one batch of ``lane``."""
    return count <= 1 or (count <= lane.max_batch_items and count * max_cost <= lane.batch_budget)


def run_inline(prepared: Prepared) -> Encoded:
    """Run a prepared request in the calling thread: each lane's items sorted by cost and cut
    into batches exactly as the queue cuts a request that runs alone."""
    outputs = []
    for work in prepared.work:
        order = sorted(range(len(work.payloads)), key=lambda i: work.costs[i])
        rows: np.ndarray | None = None
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and fits(work.lane, end - start + 1, work.costs[order[end]]):
                end += 1
            idx = order[start:end]
            out = work.lane.run([work.payloads[i] for i in idx])
            if rows is None:
                rows = np.empty((len(order), *out.shape[1:]), dtype=out.dtype)
            rows[idx] = out
            start = end
        outputs.append(rows if rows is not None else np.empty((0, 0), dtype=np.float32))
    return prepared.finish(outputs)
