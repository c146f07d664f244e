"""ONNX Runtime session construction from settings (shared by every ONNX backend)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from .backends import one_off
from .settings import Settings

log = logging.getLogger(__name__)

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def create_session(model_path: Path, settings: Settings, *, spin: bool = True,
                   threads: int | None = None):
    """A CPU session. ``spin``: whether idle intra-op threads busy-wait for the next run (good
    for back-to-back small runs, as in text; bad when Python work such as image decoding runs
    between them). ``EMBEDDINGS_ORT_SPINNING`` overrides it for every model. ``threads``:
    intra-op threads for this session (else ``Settings.session_threads``: the cores shared among
    the inference workers, or ``EMBEDDINGS_ORT_INTRA_OP_THREADS``)."""
    import onnxruntime as ort  # heavy import: only when a model loads

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            _LEVELS[settings.ort_optimization_level])
    opts.intra_op_num_threads = threads or settings.session_threads
    opts.inter_op_num_threads = settings.ort_inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if settings.ort_spinning is not None:
        spin = settings.ort_spinning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # The CPU arena keeps the largest run's buffers; release_arena_when_idle gives them back.
    opts.enable_cpu_mem_arena = settings.ort_cpu_mem_arena
    return ort.InferenceSession(str(model_path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def release_arena_when_idle(session, feeds: dict, settings: Settings) -> None:
    """When the process goes idle (memory.on_idle), run ``feeds`` (a tiny valid input) once with
    onnxruntime's arena shrinkage, which frees the arena's chunks no longer in use: the buffers
    of the last burst's largest batch go back to the system instead of staying for good."""
    if not (settings.ort_cpu_mem_arena and settings.memory_tuning):
        return
    import onnxruntime as ort

    from . import memory

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    memory.on_idle(lambda live: live.run(None, feeds, shrink), owner=session)


class SessionPair:
    """The session a text lane runs a batch on: the default one (one intra-op thread per core)
    or, while the traffic is many small concurrent requests, a one-thread session.

    Why (docs/inference-queue.md, "Many one-sentence requests at once"): with many concurrent
    one-sentence requests the request threads (HTTP, parsing, tokenising, rendering) need about
    as much CPU as the model; an ONNX Runtime run on every core then competes with them, and its
    threads wait for each other at every operator. On one thread the model runs beside them:
    +19-30 % one-sentence requests/s from 8 clients on 2 cores (paired runs), while batched
    requests keep every core. The choice follows recent batches, not just the current one (a
    lone small batch between small batches of several requests stays on one thread, or the
    other threads' spinning after it costs the gain): exponential averages of padded tokens and
    of requests per batch; small (< ``SMALL_TOKENS``) batches of several requests (>=
    ``MIN_REQUESTS``) on average choose the one-thread session, and a batch of ``BIG_TOKENS``
    or more switches back at once. Both sessions are created on first use: traffic that never
    needs the one-thread session costs nothing, and a text deployment whose first inputs are
    all long (run elsewhere, openvino_session.py) does not wait for either."""

    SMALL_TOKENS = 384
    BIG_TOKENS = 768
    MIN_REQUESTS = 1.5
    DECAY = 0.8

    def __init__(self, make_wide: Callable[[], Any], make_narrow: Callable[[], Any] | None):
        self._make_wide = make_wide
        self._wide: Any = None
        self._make_narrow = make_narrow      # None: always the default session
        self._narrow: Any = None
        self._lock = threading.Lock()
        self.avg_tokens = float(self.BIG_TOKENS)
        self.avg_requests = 1.0

    def choose_narrow(self, batch_tokens: int, requests: int) -> bool:
        """Update the averages with one batch; whether it should run on one thread."""
        if batch_tokens >= self.BIG_TOKENS:
            self.avg_tokens = float(batch_tokens)
        else:
            self.avg_tokens = self.DECAY * self.avg_tokens + (1 - self.DECAY) * batch_tokens
        self.avg_requests = self.DECAY * self.avg_requests + (1 - self.DECAY) * requests
        return (self._make_narrow is not None and self.avg_tokens < self.SMALL_TOKENS
                and self.avg_requests >= self.MIN_REQUESTS)

    @property
    def wide(self) -> Any:
        """The default session, created on first use (by one thread, the others wait for it)."""
        if self._wide is None:
            with one_off(), self._lock:
                if self._wide is None:
                    self._wide = self._make_wide()
        return self._wide

    def pick(self, batch_tokens: int, requests: int) -> Any:
        if not self.choose_narrow(batch_tokens, requests):
            return self.wide
        if self._narrow is None:
            with one_off(), self._lock:
                if self._narrow is None:
                    log.info("many small concurrent requests: creating a one-thread session")
                    self._narrow = self._make_narrow()
        return self._narrow
