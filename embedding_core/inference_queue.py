"""The per-process inference queue: handlers enqueue and wait, worker threads run batches.

The design follows text-embeddings-inference (``router`` → ``core/src/queue.rs`` → backends):

* A request prepares its inputs in its own thread (tokenises text, decodes images; see
  ``backends.Prepared``) and submits them as one **job**. Admission is bounded by the *cost*
  queued (tokens for text lanes, images for image lanes), not by the number of requests: past
  the bound the job is refused with 429 and a ``Retry-After`` estimated from the measured
  throughput. Each job's items of one lane are kept shortest first.
* **Worker threads** (``workers``: one per core in the service), started lazily on the first
  job (never at import), form micro-batches from whatever is queued: a worker takes the job at
  the front of a round-robin ring, starts a batch with that job's next (shortest remaining)
  items of one lane, fills what is left of the batch budget with the next items of the other
  jobs on the same lane (in ring order), runs the batch and scatters the rows back. Every job it
  serves moves to the back of the ring when the batch is formed, and a job arriving while
  batches run is placed ahead of the jobs they serve. So small requests are batched together,
  and a large request is cut into micro-batches interleaved with everyone else's: a
  one-sentence request never waits for a whole large one. Workers run batches side by side; a
  batch formed while other workers are idle takes only its share of what is queued, so a lone
  request keeps every core.
* Each handler waits on its own job, with a deadline; the rows come back in item order. A job
  that times out or whose handler gives up is cancelled: its queued items are dropped.
* Admission also refuses a job the queue could not finish in time (unless the queue is empty:
  a lone request is bounded by the per-request token cap, and by the instance's speed: see
  ``TOO_SLOW_MARGIN``). Under round-robin the job that finishes last is the largest, after all
  the work queued with it: a job that needs more than ``SMALL_JOB_S`` of inference is admitted
  only if the queued work plus its own, at the measured throughput, fits in ``max_wait_s``, or
  several large requests would all be admitted and all time out together. A smaller job only
  has to finish in time itself: it shares the workers with each queued job until either is
  done, a turn (one batch) at a time, so it is refused only when the jobs ahead of it are too
  many, not because one of them is large. No job is admitted that would push a queued job that
  is on time past its deadline.
* A worker survives anything a batch throws (the jobs in that batch fail with it), is
  restarted by whoever finds it dead, and is stopped and joined at interpreter exit (a daemon
  thread killed inside ONNX Runtime aborts the process).

Nothing here knows HTTP, models or wire formats: lanes run batches, jobs carry opaque payloads.
"""

from __future__ import annotations

import atexit
import bisect
import collections
import itertools
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import errors
from .backends import Lane, Prepared, Work, fits, take_one_off_seconds

log = logging.getLogger(__name__)

# Throughput assumed before the workers have measured any (per unit per second, tokens per
# worker: one worker per core by default); deliberately low, so early estimates err on the long
# side. The first batches here measure 5,400-9,600 tokens/s with two workers on two cores; at
# 2,000 for the process a cold start told clients to wait 48 s for what took under 1 s. Per
# worker, a smaller instance (one core) still assumes 2,000: two requests of the cap admitted
# together at a cold start would otherwise need more than the time-out there.
DEFAULT_RATES = {"tokens": 2000.0, "images": 20.0}
PER_WORKER = {"tokens"}
RATE_DECAY = 0.8              # weight of the past in the throughput estimate, per batch
# Wall seconds a request spends preparing each unit (decoding a picture, on its thread and the
# decode helpers, beside the other requests), until measured here: for the Retry-After of a
# refusal that the requests being prepared cause (their pictures queue only once decoded). A
# 12 Mpx JPEG takes ~40 ms of CPU in draft mode, a 2 Mpx one ~16 (docs/images.md); tokenising
# is fast enough to leave out. Measured as the requests' seconds over their units, each past
# unit's weight decayed by PREP_DECAY per unit prepared since (about the last 50 pictures), so
# that one-picture requests do not outweigh a request of 64 (a mean per request did).
DEFAULT_PREP_S = {"images": 0.05}
PREP_DECAY = 0.98
# A batch updates the estimate only if it carried this much work: a run's fixed cost (about 300
# operators, the work of 16-24 tokens) dominates smaller ones, and a rate measured on
# one-sentence batches (about a third of the batched rate here) would make a large request's
# estimate three times too long. Low enough that half of a request of 32 short sentences (what
# each of two workers runs) counts.
RATE_SAMPLE_MIN = {"tokens": 64, "images": 1}
# A job whose own inference is estimated under this is admitted whenever it can finish in time
# itself (see the module's docstring); it delays the others by about that much at most.
SMALL_JOB_S = 1.0
# Batches that must have updated a rate before it counts as measured (``QueueStats.measured``,
# ``tokens_per_second`` in /health, the 422 of ``TOO_SLOW_MARGIN``): the first batches after a
# start run slower (AMD VM: ~4,200 tokens/s in the first request of 8 × 256 tokens,
# 5,200-7,400 in the next four).
RATE_TRUSTED_SAMPLES = 8
# The longest Retry-After given. The openai SDK (and the frameworks built on it) does not retry
# at all past 120 s; a client told 120 s when more is needed comes back and is told the rest.
RETRY_AFTER_MAX_S = 120
# A request that cannot finish within its time even alone, at the throughput measured here for
# its model (a slower CPU than the token cap was chosen for, or a cap raised past it), would time
# out with a 503 that every client retries in full: three or four times the time-out billed for
# nothing. It gets a 422 instead, which clients do not retry: at once if its estimate is over
# TOO_SLOW_MARGIN times the time it has left (the estimate errs, so a request near the limit is
# run), or when it times out if its own work still needs over TIMED_OUT_MARGIN times the time it
# had (at or under it, it may have been late because of the requests queued with it: a 503).
TOO_SLOW_MARGIN = 2.0
TIMED_OUT_MARGIN = 1.25
# The same for the time-out a client sent (api.ApiRequest.client_timeout_s): a few seconds, not
# 200, so the estimate's errors matter, and a false refusal is a 4xx that clients do not retry
# where running costs at most the client's time-out. A rate of elapsed time reads low while the
# CPU is contended (steal, other processes: reviews h_diff9, h_diff10 measured 919 tokens/s
# beside 8 busy processes, and a request estimated at 4.2 s ran in 0.88 s; with 16, 8.4 s
# against 1.01 s). So the client's time-out is judged at the lane's rate per second of the
# worker thread's own CPU time (``_lane_cpu``) times the cores the runs can use: about what the
# request gets with every core to itself (a session's own threads only make it read higher).
# Contention lowers it only 6-16 % (cache and memory sharing), and per token it varies with the
# batch's shape by about ±25 % (one thread: 4,900-5,030 tokens per CPU second in runs of
# 4 × 256 tokens, ~5,200 in runs of ~64, 6,070-6,130 in runs of 32 short inputs; review
# h_diff11): the margin covers both.
CLIENT_TOO_SLOW_MARGIN = 2.0
TOO_SLOW_LOG_EVERY_S = 60.0    # the operator's warning about such refusals, at most this often
# A batch counts for a lane's too-slow rate only if its share of the process's time was at most
# this times 1/workers (batches of one request on two workers end a little apart).
FULLY_SHARED = 1.15
CAP_SETTINGS = {"tokens": "EMBEDDINGS_MAX_REQUEST_TOKENS", "images": "EMBEDDINGS_MAX_IMAGE_INPUTS"}
EMPTY = np.empty((0, 0), dtype=np.float32)
# A failing batch is logged with its traceback at most once a minute for each kind of error
# (its exception's type, not its message, which may vary per batch: sizes, shapes; at most this
# many kinds, then "other"), the rest counted in its next line: a persistent failure (a broken
# runtime, memory) fails every request and would otherwise log a traceback per batch, and
# another per request (review h_ops1 4).
FAILURE_LOG_EVERY_S = 60.0
FAILURE_LOG_KINDS_MAX = 64


class InferenceFailed(RuntimeError):
    """A batch that held the request's inputs failed (a 500); the batch's log has the cause."""


class JobCancelled(RuntimeError):
    """``wait()`` on a job that :meth:`InferenceQueue.cancel` dropped from elsewhere: it has no
    results (its rows may be partly filled or empty)."""


class _Throttle:
    """Whether a kind of failure is logged now: the count left out since its last line, or
    None to leave this one out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            if kind not in self._kinds and len(self._kinds) >= FAILURE_LOG_KINDS_MAX:
                kind = "(other)"
            last, left_out = self._kinds.get(kind, (-math.inf, 0))
            if now - last < FAILURE_LOG_EVERY_S:
                self._kinds[kind] = (last, left_out + 1)
                return None
            self._kinds[kind] = (now, 0)
            return left_out


def _failure_kind(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def default_rates(workers: int) -> dict[str, float]:
    """The rates assumed before any is measured, for ``workers`` workers."""
    return {u: r * (max(1, workers) if u in PER_WORKER else 1) for u, r in DEFAULT_RATES.items()}


@dataclass(eq=False)
class _Part:
    """One Work of a job: its items sorted by cost, and the rows that came back."""

    work: Work
    order: list[int]
    next: int = 0
    rows: np.ndarray | None = None

    @property
    def pending(self) -> int:
        return len(self.order) - self.next


@dataclass(eq=False)          # identity: jobs are compared and removed by identity
class Job:
    parts: list[_Part]                     # one per Work of the Prepared, empty ones included
    costs: dict[str, int]                  # queued cost per unit when admitted
    left: collections.Counter = field(default_factory=collections.Counter)  # cost not started
    deadline: float | None = None          # perf_counter time its handler stops waiting
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None           # when its first batch started
    inference_s: float = 0.0               # time while at least one of its batches ran
    _ran_until: float = 0.0                # the end of the batches counted so far
    batches: int = 0
    running: int = 0                       # its batches running now
    remaining: int = 0                     # items not yet computed
    error: BaseException | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def queue_s(self) -> float:
        return (self.started if self.started is not None else time.perf_counter()) - self.enqueued

    def ran(self, start: float, end: float) -> None:
        """Count a batch that carried its items (called as batches end, under the queue's
        lock): batches of one request running side by side on several workers count once."""
        self.inference_s += max(0.0, end - max(start, self._ran_until))
        self._ran_until = max(self._ran_until, end)
        self.batches += 1

    def outputs(self) -> list[np.ndarray]:
        """Rows per Work, in the Prepared's order (an empty Work gives an empty array)."""
        return [p.rows if p.rows is not None else EMPTY for p in self.parts]


@dataclass
class QueueStats:
    jobs: int                               # requests queued or running
    queued: dict[str, int]                  # cost not yet started, per unit
    rates: dict[str, float]                 # units per second (assumed until measured)
    batches: int                            # batches run since start
    worker_alive: bool
    preparing: dict[str, int] = field(default_factory=dict)  # likely cost of requests being
    #                                         prepared (tokenised), held against new arrivals
    measured: frozenset[str] = frozenset()  # units whose rate comes from batches run here


_queues: "weakref.WeakSet[InferenceQueue]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for q in list(_queues):
        q.stop()


class InferenceQueue:
    """One per process (see ``service.py``). ``limits`` bounds queued cost per unit;
    ``max_wait_s`` bounds the estimated time to finish a newly admitted job."""

    def __init__(self, limits: dict[str, int], *, max_wait_s: float | None = None,
                 on_idle: Callable[[], None] | None = None, name: str = "inference-worker",
                 workers: int = 1, cores: int | None = None):
        """``cores``: the cores the workers' runs can use together (the process's usable
        cores; default: ``workers``), for a client's time-out (``CLIENT_TOO_SLOW_MARGIN``)."""
        self.limits = dict(limits)
        self.workers = max(1, int(workers))
        self.cores = max(1, int(cores if cores is not None else self.workers))
        self.max_wait_s = max_wait_s
        self.on_idle = on_idle
        self.name = name
        self._cond = threading.Condition()
        self._failure_log = _Throttle()
        self._ring: collections.deque[Job] = collections.deque()
        self._queued: collections.Counter[str] = collections.Counter()
        # Likely costs of requests between precheck and submit (tokenising, decoding): a burst
        # all passed the precheck at an empty queue, all tokenised, and most were then refused.
        self._preparing: collections.Counter[str] = collections.Counter()
        self._preparing_jobs: collections.Counter[str] = collections.Counter()   # requests
        # Per unit: [decayed units prepared, decayed wall seconds they took], from a prior of one
        self._prep = {u: [1.0, s] for u, s in DEFAULT_PREP_S.items()}
        self._work = {u: 0.0 for u in DEFAULT_RATES}       # decayed sums behind the rates
        self._time = {u: 0.0 for u in DEFAULT_RATES}
        self._rates = default_rates(self.workers)
        self._samples: collections.Counter[str] = collections.Counter()  # batches in each rate
        self._measured: set[str] = set()    # units with RATE_TRUSTED_SAMPLES of them
        # The same per lane key (one model: deployments share the unit, not the speed), from
        # batches that shared the process with every other worker, for whether a request is too
        # slow for this instance: [decayed work, decayed time, batches].
        self._lane_rates: dict[object, list[float]] = {}
        # Per lane key, from every batch that is a sample: [decayed work, decayed CPU seconds of
        # the worker thread that ran it, batches], for a client's time-out (CLIENT_TOO_SLOW_MARGIN).
        self._lane_cpu: dict[object, list[float]] = {}
        self._too_slow_logged = -math.inf
        self._batches = 0
        self._running = 0                  # batches being run now
        # Processor-sharing time: advances by dt / (batches running) while any runs, so that a
        # batch's share of the process's time is the difference between its end and start.
        self._vtime = 0.0
        self._vmark = time.perf_counter()   # when _vtime was last advanced
        self._threads: list[threading.Thread] = []
        self._short_of_workers = False
        self._out: set[Job] = set()        # jobs out of the ring whose last items are running
        self._stopping = False
        # When the requests refused so far may all have been admitted (``perf_counter`` time):
        # each refusal is told to come back after those before it, not at the same moment.
        self._next_slot = 0.0
        self._clock = time.perf_counter   # of the slots (tests freeze it)
        _queues.add(self)

    # -- handler side ---------------------------------------------------------------------------
    def precheck(self, costs: dict[str, int],
                 likely: dict[str, int] | None = None) -> dict[str, int]:
        """Refuse at once (429) a request that could not be admitted even at ``costs`` (a lower
        bound of its cost), before it spends anything on tokenising or decoding. ``likely``: an
        estimate of its real cost, for the ``Retry-After`` (from the lower bound it was 1 s where
        5 s were needed, and the early retry was tokenised and refused again), and held against
        later prechecks until :meth:`prepared` is called with what this returns: the requests
        being prepared count with the queued ones, so a burst's later arrivals are refused
        before they tokenise. Admission itself (:meth:`submit`) counts only what is queued."""
        held = dict(likely or costs)
        with self._cond:
            self._admit(costs, likely, preparing=True)
            self._preparing.update(held)
            self._preparing_jobs.update(u for u, n in held.items() if n > 0)
        return held

    def prepared(self, held: dict[str, int], seconds: float | None = None) -> None:
        """The request :meth:`precheck` returned ``held`` for is prepared (or failed), in
        ``seconds`` if it was (the time per unit, for the Retry-After of :meth:`_refusal`)."""
        with self._cond:
            self._preparing.subtract(held)
            self._preparing_jobs.subtract(u for u, n in held.items() if n > 0)
            for unit, n in held.items():
                if seconds is not None and n > 0 and unit in self._prep:
                    past = self._prep[unit]
                    keep = PREP_DECAY ** n
                    past[0], past[1] = keep * past[0] + n, keep * past[1] + seconds

    def _prep_s(self, unit: str) -> float:
        """The wall seconds a request spends preparing one ``unit`` (:data:`DEFAULT_PREP_S`)."""
        units, seconds = self._prep[unit]
        return seconds / units

    def submit(self, prepared: Prepared, deadline: float | None = None) -> Job:
        """Admit ``prepared`` or raise 429 with a Retry-After estimated from the queue.
        ``deadline`` (``time.perf_counter()`` time): when its handler stops waiting; later
        requests are not admitted if they would make it miss it."""
        parts = []
        for work in prepared.work:
            if len(work.payloads) != len(work.costs):
                raise ValueError("one cost per payload")
            order = sorted(range(len(work.payloads)), key=lambda i: work.costs[i])
            parts.append(_Part(work, order))
        costs: collections.Counter[str] = collections.Counter()
        for p in parts:
            costs[p.work.lane.unit] += int(sum(p.work.costs))
        job = Job(parts, dict(costs), collections.Counter(costs), deadline,
                  remaining=sum(len(p.order) for p in parts))
        if not job.remaining:
            job.done.set()
            return job
        with self._cond:
            self._admit(costs)
            self._ensure_worker()            # before the job counts: a failed start adds nothing
            for unit, cost in costs.items():
                self._queued[unit] += cost
            # Ahead of the jobs whose batches are running (they went to the back of the ring
            # when their batch was formed): a newcomer is served next, not after them.
            at = len(self._ring)
            while at and self._ring[at - 1].running:
                at -= 1
            self._ring.insert(at, job)
            self._cond.notify()
        return job

    def wait(self, job: Job, timeout: float, limit_s: float | None = None, *,
             on_timeout: Callable[[], errors.ApiError] | None = None) -> list[np.ndarray]:
        """The job's output rows per Work; cancels it on time-out (503) or any interruption.
        ``limit_s``: the request's whole time limit, which the 503 names (``timeout`` is what
        is left of it). ``on_timeout()``: the error to raise on time-out instead (the caller's
        reason to stop waiting before its limit)."""
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while not job.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not job.done.wait(min(left, 1.0)):
                    with self._cond:         # a worker that died is restarted by its waiters
                        if self._ring and not self._stopping:
                            self._ensure_worker()
        except BaseException:
            self.cancel(job)
            raise
        if not job.done.is_set() and self.cancel(job):
            if on_timeout is not None:
                raise on_timeout()
            with self._cond:
                too_slow = self._too_slow([p.work for p in job.parts], timeout, limit_s,
                                          TIMED_OUT_MARGIN)
            raise too_slow or self.timed_out(timeout if limit_s is None else limit_s)
        if job.error is not None:
            raise job.error
        if job.cancelled:            # by another caller of cancel(): no rows to return
            raise JobCancelled("the job was cancelled before it finished")
        return job.outputs()

    def run(self, prepared: Prepared, timeout: float,
            limit_s: float | None = None) -> tuple[Job, list[np.ndarray]]:
        """Submit and wait (see :meth:`wait`); with no time left (preparing took it all:
        decoding large images), a 503 at once, nothing queued."""
        job = self.start(prepared, timeout, limit_s)
        return job, self.wait(job, timeout, limit_s)

    def start(self, prepared: Prepared, timeout: float, limit_s: float | None = None, *,
              wait_s: float | None = None, client_s: float | None = None) -> Job:
        """Submit, unless no time is left (a 503 at once, nothing queued) or the request could
        not finish in its time even alone (422, see ``TOO_SLOW_MARGIN``). ``wait_s``: how long
        its handler will wait, when less than ``timeout`` (the job's deadline for admission);
        ``client_s``: the time-out its client sent, when that is why (``wait_s`` is what is
        left of it): a request that could not finish within it even alone is refused the
        same way, with a message naming the client's time-out."""
        if timeout <= 0:
            raise self.timed_out(timeout if limit_s is None else limit_s)
        with self._cond:
            too_slow = self._too_slow(prepared.work, timeout, limit_s, TOO_SLOW_MARGIN)
            if too_slow is None and client_s is not None:
                # Against its whole time-out, not what preparing left of it: a request that was
                # slow to prepare (a busy instance) may be fine on a retry, and gets the 499.
                too_slow = self._too_slow(prepared.work, client_s, client_s,
                                          CLIENT_TOO_SLOW_MARGIN, client=True)
        if too_slow is not None:
            raise too_slow
        return self.submit(prepared, time.perf_counter() + (timeout if wait_s is None
                                                            else min(timeout, wait_s)))

    def timed_out(self, limit_s: float) -> errors.ApiError:
        """The 503 of a request still unfinished after ``limit_s`` (the server's time-out)."""
        with self._cond:
            retry_after = self._retry_after(self._drain_s(None))
        return errors.ApiError(
            503, "ServiceUnavailable",
            f"The request did not finish within {limit_s:g} seconds "
            "(EMBEDDINGS_REQUEST_TIMEOUT_SECONDS) and was cancelled; retry after the indicated "
            "delay or send fewer inputs.",
            headers={"Retry-After": str(retry_after)})

    def _too_slow(self, works: list[Work], timeout: float, limit_s: float | None,
                  margin: float, *, client: bool = False) -> errors.ApiError | None:
        """The 422 for a job of ``works`` that needs more than ``margin`` times ``timeout`` (the
        time its request has left) on its own at the rates measured here for its lanes, else
        None. Lock held. Not before each lane's rate is measured (``RATE_TRUSTED_SAMPLES``).
        ``client``: ``limit_s`` is the time-out the request's client sent, not the server's
        (the message says so, and the operator's warning is not logged: nothing to change),
        and the lanes' rates per CPU second are used (``CLIENT_TOO_SLOW_MARGIN``)."""
        costed = [(w.lane, int(sum(w.costs))) for w in works if len(w.costs)]
        need = 0.0
        for lane, cost in costed:
            if client:
                cwork, cpu, cbatches = self._lane_cpu.get(lane.key, (0.0, 0.0, 0))
                if cbatches < RATE_TRUSTED_SAMPLES or cpu <= 0:
                    return None
                need += cost * cpu / cwork / self.cores
                continue
            work, spent, batches = self._lane_rates.get(lane.key, (0.0, 0.0, 0))
            if batches < RATE_TRUSTED_SAMPLES or spent <= 0:
                return None
            need += cost * spent / work
        if not costed or need <= margin * timeout:
            return None
        limit = timeout if limit_s is None else limit_s
        units = collections.Counter()
        for lane, cost in costed:
            units[lane.unit] += cost
        unit, cost = units.most_common(1)[0]
        rate = cost / need                                # what the whole job runs at
        # Half the limit, with room; and no more than half of this request (its time went to
        # preparing it, when little was left). For a client's time-out, at the process's rate
        # of elapsed time (admission's, /health's) when slower: the rate that decides is
        # optimistic by design, and advice sized at it ran past the time-out under load
        # (review h_diff11 H2).
        sized_at = min(rate, self._rates[unit]) if client and unit in self._measured else rate
        fits_in = max(1, int(min(sized_at * limit * 0.5, cost / 2)))
        if client:
            return errors.validation(
                f"The request needs about {_seconds(need)} s of inference on this instance "
                f"({_count(cost, unit)} at up to {rate:,.0f} {unit}/s, measured here), more than "
                f"the {_seconds(limit)} s its client waits (the time-out it sent, as "
                "x-stainless-read-timeout or x-stainless-timeout); a retry would fail the same "
                "way. Raise the client's time-out, or split the inputs over requests of at most "
                f"about {_count(fits_in, unit)}.", "input")
        has = (f"the {_seconds(limit)} s a request may take" if timeout >= 0.99 * limit
               else f"the {_seconds(timeout)} s left to it of the {_seconds(limit)} s a request "
                    "may take")
        now = time.monotonic()
        if now - self._too_slow_logged >= TOO_SLOW_LOG_EVERY_S:
            self._too_slow_logged = now
            log.warning("a request of %s was refused (422): it needs about %s s of inference at "
                        "the %.0f %s/s measured here, more than the %s s it had; for this "
                        "instance's CPU lower %s (to about %d) or raise "
                        "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS (logged at most once a minute)",
                        _count(cost, unit), _seconds(need), rate, unit, _seconds(timeout),
                        CAP_SETTINGS.get(unit, "the request limits"), fits_in)
        return errors.validation(
            f"The request needs about {_seconds(need)} s of inference on this instance "
            f"({_count(cost, unit)} at the {rate:,.0f} {unit}/s measured here), more than {has} "
            "(EMBEDDINGS_REQUEST_TIMEOUT_SECONDS); a retry would fail the same way. Split the "
            f"inputs over requests of at most about {_count(fits_in, unit)}.", "input")

    def cancel(self, job: Job) -> bool:
        """Drop the job's queued items (rows of a batch already running are discarded).
        False if the job had already finished (its result stands)."""
        with self._cond:
            if job.cancelled or job.done.is_set():
                return job.cancelled
            job.cancelled = True
            self._drop(job)
            job.done.set()
            return True

    def stats(self) -> QueueStats:
        with self._cond:
            running = sum(not j.done.is_set() for j in self._out)
            return QueueStats(len(self._ring) + running, dict(self._queued),
                              dict(self._rates), self._batches,
                              any(t.is_alive() for t in self._threads),
                              {u: n for u, n in self._preparing.items() if n > 0},
                              frozenset(self._measured))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers after their current batch (interpreter exit); jobs with items still
        queued fail with 503, a job whose last items are running gets them."""
        with self._cond:
            self._stopping = True
            for job in [j for j in self._ring if any(p.pending for p in j.parts)]:
                job.error = _stopping_error()
                self._drop(job)
                job.done.set()
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    # -- admission and estimates (lock held) ----------------------------------------------------
    def _drain_s(self, costs: dict[str, int] | None) -> float:
        """Seconds to run what is queued (plus ``costs``) at the measured rates."""
        extra = costs or {}
        units = set(self._queued) | set(extra)
        return sum((self._queued[u] + extra.get(u, 0)) / self._rates.get(u, 1.0) for u in units)

    def _retry_after_cap(self) -> int:
        return min(RETRY_AFTER_MAX_S, max(1, int(self.max_wait_s))) if self.max_wait_s \
            else RETRY_AFTER_MAX_S

    def _retry_after(self, seconds: float) -> int:
        return min(self._retry_after_cap(),
                   max(1, math.ceil(seconds - 1e-3)))   # not 2 s for 1.0000001

    def _admit(self, costs: dict[str, int], likely: dict[str, int] | None = None,
               preparing: bool = False) -> None:
        """Return if a job of ``costs`` can be admitted now, else raise 429 (503 if stopping).
        The ``Retry-After`` is from ``likely`` when given (see :meth:`precheck`); ``preparing``:
        count the requests being prepared as queued."""
        if self._stopping:
            raise _stopping_error()
        wait = self._refusal(costs, preparing)
        if wait is None:
            return
        if likely is not None:
            wait = max(wait, self._refusal(likely, preparing) or 0.0)
            costs = likely
        raise errors.too_many_requests(self._slot(wait, costs))

    def _refusal(self, costs: dict[str, int], preparing: bool = False) -> float | None:
        """None if a job of ``costs`` can be admitted now, else the seconds until it could be
        (as far as the queue can tell: the work ahead of it drained at the measured rates)."""
        for unit, cost in costs.items():
            limit = self.limits.get(unit)
            queued = self._queued[unit]
            being_prepared = max(0, self._preparing[unit]) if preparing else 0
            if limit is not None and queued + being_prepared + cost > limit:
                over = queued + being_prepared + cost - limit
                rate = self._rates.get(unit, 1.0)
                if over <= queued or unit not in self._prep:
                    return over / rate
                # Room comes only as items are run, and those being prepared (pictures being
                # decoded) queue once they are: an image request refused behind two of 64
                # pictures being decoded was told 1 s, 27 times over 13.5 s (review h_chaos1
                # F3). They are prepared side by side, each at the measured time per unit.
                decoding = (being_prepared * self._prep_s(unit)
                            / max(1, self._preparing_jobs[unit]))
                return max(queued / rate, decoding) + (over - queued) / rate
        if not self.max_wait_s or not self._ring:
            return None
        own = self._job_s(costs)
        if own <= SMALL_JOB_S:
            need = own + sum(min(self._job_s(job.left), max(own, self._turn_s(job)))
                             for job in self._ring)
        else:
            need = self._drain_s(costs)
        if need > self.max_wait_s:
            return need - self.max_wait_s
        return self._would_make_late(own)

    def _slot(self, wait: float, costs: dict[str, int]) -> int:
        """The ``Retry-After`` of a job of ``costs`` refused for ``wait`` seconds. Requests
        refused in a burst were all told the same moment, came back together and were mostly
        refused again (with the openai SDK's two retries, 4 of 8 failed where the queue could
        have run all 8 in time): each refusal now comes back after the work of those refused
        before it. The slots reach no further than the time the queue takes to run its whole
        bound once after ``wait`` (by then it has room for a full bound's worth of those
        coming back), nor past the longest ``Retry-After``: a client retrying without waiting,
        or refused clients that never come back, push the others' no further than that."""
        now = self._clock()
        turnover = sum(self.limits[u] / self._rates.get(u, 1.0) for u in costs
                       if u in self.limits)
        horizon = now + min(self._retry_after_cap(), wait + turnover)
        slot = min(max(now + wait, self._next_slot), max(now + wait, horizon))
        self._next_slot = min(slot + self._job_s(costs), horizon)
        return self._retry_after(slot - now)

    def _would_make_late(self, own: float) -> float | None:
        """If admitting ``own`` seconds of work would make a queued job that is on time miss its
        deadline, the seconds until that job should be done; else None. Under round-robin a job
        with ``t`` seconds left finishes after ``sum(min(t_k, t))`` over the queue, and a
        newcomer delays it by ``min(own, t)``: small requests may use the time a large one has
        to spare, not more (a burst of them had pushed an admitted large request past its
        time-out: 503 after its CPU was spent)."""
        jobs = [(self._job_s(j.left), j.deadline) for j in self._ring]
        times = sorted(t for t, _ in jobs)
        prefix = list(itertools.accumulate(times, initial=0.0))
        now = time.perf_counter()
        worst: float | None = None
        for t, deadline in jobs:
            if deadline is None:
                continue
            i = bisect.bisect_right(times, t)
            finish = now + prefix[i] + (len(times) - i) * t
            if finish <= deadline < finish + min(own, t):
                worst = max(worst or 0.0, finish - now)
        return worst

    def _job_s(self, costs: dict[str, int]) -> float:
        """Seconds to run ``costs`` at the measured rates."""
        return sum(n / self._rates.get(u, 1.0) for u, n in costs.items() if n)

    def _turn_s(self, job: Job) -> float:
        """Seconds of one full batch of the lane ``job`` is served on next."""
        lane = next((p.work.lane for p in job.parts if p.pending), None)
        return 0.0 if lane is None else lane.batch_budget / self._rates.get(lane.unit, 1.0)

    # -- worker side ----------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        """Start the workers (or restart any that died), lock held."""
        self._threads = [t for t in self._threads if t.is_alive()]
        names = {t.name for t in self._threads}
        while len(self._threads) < self.workers:
            name = self.name if self.workers == 1 else next(
                n for i in range(self.workers) if (n := f"{self.name}-{i}") not in names)
            worker = threading.Thread(target=self._loop, daemon=True, name=name)
            try:
                worker.start()
            except RuntimeError:             # "can't start new thread": a thread limit
                if not self._threads:
                    raise                    # no worker at all: the request fails (500)
                if not self._short_of_workers:   # tried again at every request; logged once
                    self._short_of_workers = True
                    log.warning("inference queue: could not start worker %s; running on %d",
                                name, len(self._threads), exc_info=True)
                return
            self._threads.append(worker)     # known at once: a later failure cannot orphan it
            names.add(name)

    def _drop(self, job: Job) -> None:
        """Remove a job's pending items from the accounting and the ring (lock held)."""
        for p in job.parts:
            left = int(sum(p.work.costs[i] for i in p.order[p.next:]))
            self._queued[p.work.lane.unit] -= left
            job.left[p.work.lane.unit] -= left
            p.next = len(p.order)
        try:
            self._ring.remove(job)
        except ValueError:
            pass

    def _fail(self, taken: list[tuple[Job, _Part, list[int]]], exc: BaseException) -> None:
        """Every job of a batch that failed gets the error (lock held)."""
        for job, _, _ in taken:
            if job.cancelled or job.done.is_set():
                continue
            job.error = exc if isinstance(exc, errors.ApiError) else InferenceFailed("inference failed")
            self._drop(job)
            job.done.set()

    def _fail_queued(self, exc: BaseException) -> None:
        """Forming a batch raised (a bug, not an input): every queued job gets a 500 now rather
        than waiting for its time-out behind a worker that cannot form batches (lock held).
        Batches already running finish as usual."""
        jobs = list(self._ring)
        self._fail([(job, None, None) for job in jobs], exc)  # type: ignore[list-item]
        self._ring.clear()
        for unit in self._queued:  # only queued items count, and none is left
            self._queued[unit] = 0

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._ring and not self._stopping:
                    if self.on_idle is not None and not self._running:
                        self._cond.release()
                        try:
                            self.on_idle()
                        except Exception:  # noqa: BLE001 - an idle hook never stops the worker
                            log.exception("inference queue idle hook failed")
                        finally:
                            self._cond.acquire()
                        if self._ring or self._stopping:
                            break
                    self._cond.wait()
                if self._stopping:
                    return
                try:
                    lane, taken = self._form_batch()
                except Exception as exc:  # noqa: BLE001 - a bug here must not strand the queue
                    log.exception("inference queue could not form a batch")
                    self._fail_queued(exc)
                    continue
                self._advance()
                self._running += 1
                if self._ring:
                    self._cond.notify()      # an idle worker takes the next batch
            try:
                self._run_batch(lane, taken)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any batch
                log.exception("inference batch failed after running")
                with self._cond:
                    self._fail(taken, exc)
            finally:
                with self._cond:
                    self._advance()
                    self._running -= 1
                    for job in self._served(taken):
                        job.running -= 1
                    self._out = {j for j in self._out if not j.done.is_set()}
            # Nothing of the batch outlives it: an idle worker would otherwise keep its last
            # requests' inputs and rows (37 MiB for 64 pictures) from the idle trim until its
            # next batch (review h_queue1 1).
            lane = taken = job = None  # noqa: F841

    def _form_batch(self) -> tuple[Lane, list[tuple[Job, _Part, list[int]]]]:
        """Pick the next batch (lock held). Returns the lane and (job, part, indices) slices.

        With several workers, a batch formed while others are idle takes only its share of what
        is queued on its lane, so that the idle workers run the rest at the same time."""
        first = self._ring[0]
        part = next(p for p in first.parts if p.pending)
        lane = part.work.lane
        taken: list[tuple[Job, _Part, list[int]]] = []
        count, max_cost = 0, 0
        idle = len(self._threads) - self._running - 1   # workers that exist (some may not start)
        share = math.inf
        if idle > 0:
            share = math.ceil(self._queued[lane.unit] / (idle + 1))

        def take(job: Job, p: _Part) -> None:
            nonlocal count, max_cost
            start = p.next
            while p.next < len(p.order):
                c = p.work.costs[p.order[p.next]]
                if count and (count + 1) * max(max_cost, c) > share:
                    break
                if not fits(lane, count + 1, max(max_cost, c)):
                    break
                count += 1
                max_cost = max(max_cost, c)
                p.next += 1
            if p.next > start:
                taken.append((job, p, p.order[start:p.next]))

        take(first, part)
        for job in itertools.islice(self._ring, 1, None):   # the ring is not changed meanwhile
            if not fits(lane, count + 1, max_cost) or count * max_cost >= share:
                break                                        # nothing more can fit: stop looking
            for p in job.parts:
                if p.pending and p.work.lane.key == lane.key:
                    take(job, p)
        now = time.perf_counter()
        for job, p, idx in taken:
            if job.started is None:
                job.started = now
            cost = int(sum(p.work.costs[i] for i in idx))
            self._queued[lane.unit] -= cost
            job.left[lane.unit] -= cost
        self._rotate(taken)
        return lane, taken

    @staticmethod
    def _served(taken: list[tuple[Job, _Part, list[int]]]) -> list[Job]:
        served: list[Job] = []
        for job, _, _ in taken:
            if job not in served:
                served.append(job)
        return served

    def _rotate(self, taken: list[tuple[Job, _Part, list[int]]]) -> None:
        """When a batch is formed (lock held): the jobs it serves go to the back of the ring, in
        their order, so that the jobs behind them, and those that arrive while it runs, come
        first; a job with nothing left to start leaves the ring (its last items are running)."""
        for job in self._served(taken):
            job.running += 1
            if job in self._ring:
                self._ring.remove(job)
                if any(p.pending for p in job.parts):
                    self._ring.append(job)
                else:
                    self._out.add(job)

    def _advance(self) -> None:
        """Bring the processor-sharing time up to now (lock held; before ``_running`` changes)."""
        now = time.perf_counter()
        if self._running:
            self._vtime += (now - self._vmark) / self._running
        self._vmark = now

    def _run_batch(self, lane: Lane, taken: list[tuple[Job, _Part, list[int]]]) -> None:
        payloads = [p.work.payloads[i] for _, p, idx in taken for i in idx]
        take_one_off_seconds()
        with self._cond:
            self._advance()
            v0 = self._vtime
        t0 = time.perf_counter()
        c0 = time.thread_time()
        rerun: list[Job] | None = None
        try:
            out = np.asarray(lane.run(payloads, requests=len({id(job) for job, _, _ in taken})))
            if out.ndim < 1 or len(out) != len(payloads):
                raise RuntimeError(f"lane returned {out.shape} for {len(payloads)} items")
            error = None
        except BaseException as exc:  # noqa: BLE001 - delivered to every job in the batch
            out, error = None, exc
            served = self._served(taken)
            if len(served) > 1 and isinstance(exc, Exception):
                # One request's inputs can fail a batch that others share (a long-input model
                # that cannot load, a bug): each request's items that are still wanted run
                # again on their own (below, once this exception and its traceback are gone),
                # so only the requests that fail alone get the error (the one whose inputs
                # failed the batch may have been cancelled meanwhile).
                left_out = self._failure_log.allow("shared " + _failure_kind(exc))
                if left_out is not None:
                    log.warning("inference batch of %d items from %d requests failed; running "
                                "each request's items apart (logged at most once a minute for "
                                "this kind of error; %d more since the last)", len(payloads),
                                len(served), left_out, exc_info=exc)
                rerun, error = served, None
            else:
                left_out = self._failure_log.allow(_failure_kind(exc))
                if left_out is None:
                    log.debug("inference batch of %d items failed", len(payloads), exc_info=exc)
                else:
                    log.error("inference batch of %d items failed (logged at most once a minute "
                              "for this kind of error; %d more since the last)", len(payloads),
                              left_out, exc_info=exc)
        if rerun is not None:
            elapsed = time.perf_counter() - t0
            with self._cond:
                self._batches += 1
                for job in rerun:
                    job.ran(t0, t0 + elapsed)
            for job in rerun:
                if job.cancelled or job.done.is_set():   # e.g. timed out meanwhile
                    continue
                alone = [t for t in taken if t[0] is job]
                if self._stopping:   # exit waits for this worker: no more runs
                    with self._cond:
                        self._fail(alone, _stopping_error())
                    continue
                self._run_batch(lane, alone)
            return
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - c0
        one_off = take_one_off_seconds()   # a session created, a model compiled: not throughput
        with self._cond:
            self._batches += 1
            if error is not None:
                self._fail(taken, error)
                return
            # Batches running side by side share the CPU: the rate is the process's, not one
            # worker's. A batch counts its share of the time it ran (dt / batches running, over
            # its run). Its elapsed time divided by the batches running when it ended counted
            # the overlap of two side-by-side batches 1.5 times (the first to end saw two
            # running, the other one): the rate came out ~0.7 of the process's.
            work = sum(p.work.costs[i] for _, p, idx in taken for i in idx)
            self._advance()
            share = self._vtime - v0
            # A batch with one-off work (a session created, a model compiled, a wait for another
            # worker doing so) is no sample at all: that part may have run beside other batches
            # and the rest alone, so no share of it measures the compute (a rate 1.7 times too
            # high was reproduced; h_diff5 F2).
            if work >= RATE_SAMPLE_MIN.get(lane.unit, 1) and one_off <= 0 and cpu > 0:
                mine = self._lane_cpu.setdefault(lane.key, [0.0, 0.0, 0])
                mine[0] = RATE_DECAY * mine[0] + work
                mine[1] = RATE_DECAY * mine[1] + cpu
                mine[2] += 1
            if work >= RATE_SAMPLE_MIN.get(lane.unit, 1) and share > 0 and one_off <= 0:
                self._work[lane.unit] = RATE_DECAY * self._work.get(lane.unit, 0.0) + work
                self._time[lane.unit] = RATE_DECAY * self._time.get(lane.unit, 0.0) + share
                self._rates[lane.unit] = self._work[lane.unit] / self._time[lane.unit]
                self._samples[lane.unit] += 1
                if self._samples[lane.unit] >= RATE_TRUSTED_SAMPLES:
                    self._measured.add(lane.unit)
                # The too-slow 422 asks what a large request gets: split over every worker. A
                # batch that ran alone (a one-input request cannot be split) measures one
                # worker's speed, 1/workers of that (h_diff5 F1): only batches that shared the
                # process with the other workers all along count for it.
                if share <= FULLY_SHARED * elapsed / self.workers:
                    mine = self._lane_rates.setdefault(lane.key, [0.0, 0.0, 0])
                    mine[0] = RATE_DECAY * mine[0] + work
                    mine[1] = RATE_DECAY * mine[1] + share
                    mine[2] += 1
            row = 0
            for job, p, idx in taken:
                n = len(idx)
                job.ran(t0, t0 + elapsed)
                rows, row = out[row:row + n], row + n
                if job.cancelled or job.done.is_set():
                    continue
                try:
                    if p.rows is None:
                        p.rows = np.empty((len(p.order), *rows.shape[1:]), dtype=rows.dtype)
                    p.rows[idx] = rows
                except Exception as exc:  # noqa: BLE001 - e.g. rows of another width
                    log.exception("inference batch rows do not fit their request")
                    self._fail([(job, p, idx)], exc)
                    continue
                job.remaining -= n
                if job.remaining == 0:
                    job.done.set()


def _count(n: int, unit: str) -> str:
    return f"{n:,} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def _seconds(value: float) -> str:
    if value >= 10:
        return f"{value:,.0f}"
    return f"{value:.1f}".removesuffix(".0") if value >= 1 else f"{value:.2g}"


def _stopping_error() -> errors.ApiError:
    return errors.ApiError(503, "ServiceUnavailable", "The server is stopping.",
                           headers={"Retry-After": "1"})


def check_request_cost(prepared: Prepared, max_tokens: int) -> None:
    """Refuse a request whose total tokens exceed ``EMBEDDINGS_MAX_REQUEST_TOKENS``."""
    tokens = prepared.cost("tokens")
    if tokens > max_tokens:
        largest = max((int(c) for w in prepared.work if w.lane.unit == "tokens"
                       for c in w.costs), default=0)
        if largest > max_tokens:       # splitting would not help
            raise errors.validation(
                f"One input has {largest} tokens, more than the {max_tokens} a request may "
                "have on this server (EMBEDDINGS_MAX_REQUEST_TOKENS, set below the model's "
                "input length): send shorter inputs, or ask its operator to raise the setting.",
                "input")
        raise errors.validation(
            f"The request has {tokens} tokens; the limit per request is {max_tokens} "
            "(EMBEDDINGS_MAX_REQUEST_TOKENS). Split the inputs over several requests (of inputs "
            f"as long as this request's longest, {largest} tokens, {max(1, max_tokens // largest):,} "
            "fit in one).", "input")

