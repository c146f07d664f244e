"""The inference queue: ordering, fairness, batching across requests, admission (429),
cancellation, failures and the lazy worker.

The queue's decisions are tested with a lane whose batches wait at a gate the test opens, so
what runs together, and in which order, is deterministic. The real model runs through the same
queue in the HTTP and function-level tests (test_http_queue.py, test_function_app.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest

from embedding_core.backends import Encoded, Prepared, Work, one_off
from embedding_core.errors import ApiError
from embedding_core.inference_queue import (RATE_TRUSTED_SAMPLES, InferenceQueue, JobCancelled,
                                            check_request_cost)


class GateLane:
    """Runs a batch only when the test lets it; remembers every batch's payloads."""

    unit = "tokens"

    def __init__(self, key="gate", max_batch_items=4, batch_budget=100):
        self.key = key
        self.max_batch_items = max_batch_items
        self.batch_budget = batch_budget
        self.batches: list[list[str]] = []
        self.requests: list[int] = []        # what the queue said each batch held
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)
        self.fail_next = False

    def run(self, payloads, requests=1):
        self.batches.append(list(payloads))
        self.requests.append(requests)
        self.entered.release()
        assert self.gate.acquire(timeout=10), "test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        # One row per payload that says which payload it was: (hash of the name,)
        return np.array([[float(hash(p) % 10**6)] for p in payloads])

    def step(self, n=1):
        """Let ``n`` batches through, waiting until each has started."""
        for _ in range(n):
            assert self.entered.acquire(timeout=10), "no batch started"
            self.gate.release()


def job(lane, name, costs):
    payloads = [f"{name}{i}" for i in range(len(costs))]
    return Prepared([Work(lane, payloads, list(costs))],
                    lambda out: Encoded(out[0], int(sum(costs))), inputs=len(costs))


def rows_of(payloads):
    return np.array([[float(hash(p) % 10**6)] for p in payloads])


def wait_all(q, jobs, timeout=10):
    return [q.wait(j, timeout) for j in jobs]


def test_results_come_back_in_item_order_whatever_the_batch_order():
    lane = GateLane(max_batch_items=2, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6})
    j = q.submit(job(lane, "a", [50, 3, 20, 1, 9]))
    lane.step(3)
    out = q.wait(j, 10)[0]
    assert np.array_equal(out, rows_of([f"a{i}" for i in range(5)]))
    # shortest first, two at a time
    assert lane.batches == [["a3", "a1"], ["a4", "a2"], ["a0"]]


def test_small_requests_share_a_batch():
    lane = GateLane(max_batch_items=8, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6})
    first = q.submit(job(lane, "x", [5]))
    assert lane.entered.acquire(timeout=10)        # the worker is busy with x
    others = [q.submit(job(lane, n, [5])) for n in "abcd"]
    lane.gate.release()
    lane.step()
    wait_all(q, [first, *others])
    assert lane.batches == [["x0"], ["a0", "b0", "c0", "d0"]]
    assert lane.requests == [1, 4]          # the lane is told how many requests share a batch


def test_a_large_request_is_interleaved_with_a_small_one():
    """A one-input request that arrives behind a large one runs in the very next batch."""
    lane = GateLane(max_batch_items=2, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6})
    big = q.submit(job(lane, "big", [10] * 20))       # 10 batches of 2
    assert lane.entered.acquire(timeout=10)            # batch 1 (big) is running
    small = q.submit(job(lane, "s", [10]))
    lane.gate.release()
    lane.step()                                        # batch 2
    assert q.wait(small, 10)[0].shape == (1, 1)
    assert lane.batches[1][0] == "s0" and not big.done.is_set()
    lane.step(9)
    q.wait(big, 10)
    assert sum(len(b) for b in lane.batches) == 21


def test_round_robin_between_two_large_requests():
    lane = GateLane(max_batch_items=1, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6})
    a = q.submit(job(lane, "a", [1] * 3))
    assert lane.entered.acquire(timeout=10)
    b = q.submit(job(lane, "b", [1] * 3))
    lane.gate.release()
    lane.step(5)
    wait_all(q, [a, b])
    assert [x[0][0] for x in lane.batches] == ["a", "b", "a", "b", "a", "b"]


def test_budget_counts_padding_across_requests():
    """A batch holds n items only while n × longest ≤ budget, wherever the items come from."""
    lane = GateLane(max_batch_items=32, batch_budget=100)
    q = InferenceQueue({"tokens": 10**6})
    block = q.submit(job(lane, "w", [1]))
    assert lane.entered.acquire(timeout=10)
    a = q.submit(job(lane, "a", [10, 10, 10]))
    b = q.submit(job(lane, "b", [20, 40]))
    lane.gate.release()
    lane.step(2)
    wait_all(q, [block, a, b])
    # a's three and b's 20 pad to 4 × 20 = 80; b's 40 would make 5 × 40 = 200.
    assert lane.batches == [["w0"], ["a0", "a1", "a2", "b0"], ["b1"]]


def test_different_lanes_never_share_a_batch():
    one, two = GateLane(key="one"), GateLane(key="two")
    q = InferenceQueue({"tokens": 10**6})
    block = q.submit(job(one, "w", [1]))
    assert one.entered.acquire(timeout=10)
    a = q.submit(job(one, "a", [1]))
    b = q.submit(job(two, "b", [1]))
    one.gate.release()
    one.step()
    two.step()
    wait_all(q, [block, a, b])
    assert one.batches == [["w0"], ["a0"]] and two.batches == [["b0"]]


def test_admission_is_bounded_by_queued_tokens_with_an_estimated_retry_after():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 100})
    running = q.submit(job(lane, "r", [30]))
    assert lane.entered.acquire(timeout=10)           # r has left the queue: 0 queued
    queued = q.submit(job(lane, "q", [60, 30]))       # 90 queued
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "x", [20]))                 # 90 + 20 > 100
    err = exc.value
    assert err.status == 429 and err.code == "TooManyRequests"
    rate = q.stats().rates["tokens"]
    assert err.headers["Retry-After"] == str(max(1, math.ceil((90 + 20 - 100) / rate)))
    assert q.stats().queued["tokens"] == 90            # the refused job left no trace
    fits = q.submit(job(lane, "f", [10]))               # 90 + 10 = 100: admitted
    lane.gate.release()
    lane.step(3)
    wait_all(q, [running, queued, fits])
    assert q.stats().queued["tokens"] == 0


def test_retry_after_follows_the_measured_rate():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 10})
    q._rates["tokens"] = 2.0                             # 2 tokens/s measured
    block = q.submit(job(lane, "b", [1]))
    assert lane.entered.acquire(timeout=10)
    held = q.submit(job(lane, "h", [10]))
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "x", [9]))
    assert exc.value.headers["Retry-After"] == str(math.ceil(9 / 2.0))
    lane.gate.release()
    lane.step()
    wait_all(q, [block, held])


def test_a_request_that_times_out_is_cancelled_and_its_items_never_run():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    block = q.submit(job(lane, "b", [1]))
    assert lane.entered.acquire(timeout=10)
    late = q.submit(job(lane, "late", [5, 5, 5]))
    assert q.stats().queued["tokens"] == 15
    with pytest.raises(ApiError) as exc:
        q.wait(late, 0.05)
    assert exc.value.status == 503 and "Retry-After" in exc.value.headers
    assert q.stats().queued["tokens"] == 0 and q.stats().jobs == 1   # only b, running
    after = q.submit(job(lane, "after", [1]))
    lane.gate.release()
    lane.step()
    wait_all(q, [block, after])
    assert [b[0] for b in lane.batches] == ["b0", "after0"]


def test_a_request_with_no_time_left_is_refused_naming_its_whole_time_limit():
    # Preparing it (decoding large images) took the whole EMBEDDINGS_REQUEST_TIMEOUT_SECONDS.
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    with pytest.raises(ApiError) as exc:
        q.run(job(lane, "late", [5]), -1.87, 200.0)
    assert exc.value.status == 503 and "Retry-After" in exc.value.headers
    assert "did not finish within 200 seconds" in exc.value.message
    assert q.stats().jobs == 0 and lane.batches == [] and not q.stats().worker_alive
    with pytest.raises(ApiError) as exc:   # timed out while queued: the whole limit, too
        q.run(job(lane, "queued", [5]), 0.05, 200.0)
    assert "did not finish within 200 seconds" in exc.value.message
    lane.gate.release()                    # a batch that started finishes, unused


def test_cancelling_a_running_request_discards_its_rows():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    j = q.submit(job(lane, "c", [1, 1]))
    assert lane.entered.acquire(timeout=10)
    q.cancel(j)
    lane.gate.release()                                 # the running batch finishes, unused
    other = q.submit(job(lane, "o", [1]))
    lane.step()
    q.wait(other, 10)
    assert lane.batches == [["c0"], ["o0"]]


def test_a_failed_batch_fails_its_requests_only_and_the_worker_goes_on():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    lane.fail_next = True
    bad = q.submit(job(lane, "bad", [1, 1]))
    lane.step()
    with pytest.raises(RuntimeError):
        q.wait(bad, 10)
    good = q.submit(job(lane, "good", [1]))
    lane.step()
    assert q.wait(good, 10)[0].shape == (1, 1)
    assert q.stats().queued["tokens"] == 0 and q.stats().worker_alive


class PoisonLane(GateLane):
    """Fails any batch that holds a payload named ``bad...`` (as a broken long-input model
    fails any batch with a long input)."""

    def run(self, payloads, requests=1):
        out = super().run(payloads, requests)
        if any(p.startswith("bad") for p in payloads):
            raise ApiError(503, "ModelUnavailable", "the long-input model could not load")
        return out


def busy_poison_queue():
    """A queue whose worker is busy with request "x" on a PoisonLane, so that the requests
    submitted next share one batch when the test opens the gate."""
    lane = PoisonLane(max_batch_items=8, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6})
    first = q.submit(job(lane, "x", [5]))
    assert lane.entered.acquire(timeout=10)        # the worker is busy with x
    return lane, q, first


def test_a_failing_request_does_not_fail_the_requests_that_shared_its_batch():
    lane, q, first = busy_poison_queue()
    a, bad, b = (q.submit(job(lane, n, [5] * k)) for n, k in (("a", 1), ("bad", 2), ("b", 2)))
    lane.gate.release()
    lane.step(4)                                   # the shared batch, then each request alone
    assert np.array_equal(q.wait(first, 10)[0], rows_of(["x0"]))
    assert np.array_equal(q.wait(a, 10)[0], rows_of(["a0"]))
    assert np.array_equal(q.wait(b, 10)[0], rows_of(["b0", "b1"]))
    with pytest.raises(ApiError) as err:
        q.wait(bad, 10)
    assert err.value.status == 503
    assert lane.batches == [["x0"], ["a0", "bad0", "bad1", "b0", "b1"],
                            ["a0"], ["bad0", "bad1"], ["b0", "b1"]]
    assert lane.requests == [1, 3, 1, 1, 1]
    assert q.stats().queued["tokens"] == 0 and q.stats().worker_alive


@pytest.mark.parametrize("cancel, when, batches", [
    # "later" cancelled while the shared batch runs: only "bad" runs again
    ("later", "shared", [["x0"], ["bad0", "later0"], ["bad0"]]),
    # "later" cancelled while "bad" runs again alone: "later" is not run again after it
    ("later", "rerun", [["x0"], ["bad0", "later0"], ["bad0"]]),
    # "bad", whose input failed the batch, cancelled while it runs: "later" runs again alone
    # and gets its rows, not bad's error
    ("bad", "shared", [["x0"], ["bad0", "later0"], ["later0"]]),
])
def test_a_request_cancelled_before_its_rerun_is_not_run_again(cancel, when, batches):
    lane, q, first = busy_poison_queue()
    jobs = {"bad": q.submit(job(lane, "bad", [5])), "later": q.submit(job(lane, "later", [5]))}
    lane.gate.release()
    if when == "rerun":
        lane.step()                                # the shared batch fails
    assert lane.entered.acquire(timeout=10)        # the batch the job waits on has started
    assert q.cancel(jobs[cancel])                  # the job times out meanwhile
    lane.gate.release()
    if when == "shared":
        lane.step()                                # the other job's run alone
    if cancel == "later":
        with pytest.raises(ApiError):
            q.wait(jobs["bad"], 10)
    else:
        assert np.array_equal(q.wait(jobs["later"], 10)[0], rows_of(["later0"]))
    q.wait(first, 10)
    assert lane.batches == batches
    assert q.stats().queued["tokens"] == 0 and q.stats().worker_alive


def test_a_failed_shared_batch_is_not_run_again_once_the_queue_is_stopping():
    """Exit waits for the workers: requests still waiting for a re-run get 503 at once."""
    lane, q, first = busy_poison_queue()
    bad, later = q.submit(job(lane, "bad", [5])), q.submit(job(lane, "later", [5]))
    lane.gate.release()
    assert lane.entered.acquire(timeout=10)        # the shared batch has started
    stopper = threading.Thread(target=q.stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while not q._stopping and time.monotonic() < deadline:
        time.sleep(0.001)
    lane.gate.release()                            # the shared batch fails
    stopper.join(10)
    for j in (bad, later):
        with pytest.raises(ApiError) as err:
            q.wait(j, 1)
        assert err.value.status == 503 and "stopping" in err.value.message
    assert lane.batches == [["x0"], ["bad0", "later0"]]



def test_a_rerun_that_fails_again_logs_its_own_error_not_chained_to_the_shared_batch_s(caplog):
    """The shared batch's exception is gone before the requests run again apart: a re-run that
    fails logs one traceback (not "During handling of the above exception ..."), and the
    shared batch's inputs are not held by it while the re-runs take."""
    caplog.set_level(logging.DEBUG, logger="embedding_core.inference_queue")
    lane, q, first = busy_poison_queue()
    bad, good = q.submit(job(lane, "bad", [5, 5])), q.submit(job(lane, "good", [5]))
    lane.gate.release()
    lane.step(3)                                   # the shared batch, then each apart
    with pytest.raises(ApiError):
        q.wait(bad, 10)
    assert np.array_equal(q.wait(good, 10)[0], rows_of(["good0"]))
    q.wait(first, 10)
    failed = [r for r in caplog.records if r.getMessage().startswith("inference batch of 2 items failed")]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert failed[0].exc_info[1].__context__ is None


def test_wait_on_a_job_cancelled_elsewhere_raises_instead_of_returning_its_unfilled_rows():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    j = q.submit(job(lane, "c", [1, 1]))
    assert lane.entered.acquire(timeout=10)         # its first item runs
    assert q.cancel(j)                              # another caller drops it
    with pytest.raises(JobCancelled):
        q.wait(j, 10)
    lane.gate.release()
    assert lane.batches == [["c0"]]
    assert q.stats().queued["tokens"] == 0 and q.stats().worker_alive


class ArrayLane:
    """Takes numpy payloads (which a weak reference can watch) and answers their sums."""

    unit = "tokens"
    key = "arrays"
    max_batch_items = 8
    batch_budget = 10**6

    def run(self, payloads, requests=1):
        return np.array([[float(p.sum())] for p in payloads])


@pytest.mark.parametrize("workers", [1, 2])
def test_an_idle_worker_keeps_nothing_of_the_requests_it_served(workers):
    """Once answered, a request's inputs are freed while the workers wait for more: an idle
    worker that kept its last batch would keep them from the idle trim (64 pictures: 37 MiB)."""
    import gc
    import weakref

    lane = ArrayLane()
    q = InferenceQueue({"tokens": 10**6}, workers=workers)
    inputs = [np.full(1000, float(i)) for i in range(3)]
    watched = [weakref.ref(a) for a in inputs]
    j = q.submit(Prepared([Work(lane, inputs, [5, 5, 5])],
                          lambda out: Encoded(out[0], 15), inputs=3))
    rows = q.wait(j, 10)
    assert rows[0][:, 0].tolist() == [0.0, 1000.0, 2000.0]
    del inputs, j, rows
    deadline = time.monotonic() + 5
    while any(w() is not None for w in watched) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert all(w() is None for w in watched)
    assert q.stats().worker_alive
    q.stop()

def test_worker_starts_on_first_job_only_and_runs_the_idle_hook():
    idle = threading.Event()
    q = InferenceQueue({"tokens": 10}, on_idle=idle.set, name="test-lazy-worker")
    assert not any(t.name == "test-lazy-worker" for t in threading.enumerate())
    assert not q.stats().worker_alive
    lane = GateLane()
    j = q.submit(job(lane, "a", [1]))
    assert q.stats().worker_alive
    lane.step()
    q.wait(j, 10)
    assert idle.wait(10)


def test_a_request_over_the_token_cap_names_the_setting():
    lane = GateLane()
    check_request_cost(job(lane, "ok", [60, 40]), 100)
    with pytest.raises(ApiError) as exc:
        check_request_cost(job(lane, "big", [60, 41]), 100)
    assert exc.value.status == 422 and exc.value.target == "input"
    assert "101 tokens" in exc.value.message and "EMBEDDINGS_MAX_REQUEST_TOKENS" in exc.value.message
    assert "100" in exc.value.message


def test_a_request_run_inline_is_cut_into_the_batches_the_queue_would_run():
    """Scripts and tests run backends without the queue (backend.encode); the batches match
    those of the same request alone in the queue."""
    from embedding_core.backends import run_inline

    lane = GateLane(max_batch_items=3, batch_budget=40)
    q = InferenceQueue({"tokens": 10**6})
    costs = [12, 3, 30, 5, 5, 9, 14]
    j = q.submit(job(lane, "q", costs))
    lane.step(4)
    queued = q.wait(j, 10)[0]
    via_queue = list(lane.batches)
    lane.batches.clear()
    for _ in range(4):
        lane.gate.release()
    inline = run_inline(job(lane, "q", costs)).vectors
    assert lane.batches == via_queue == [["q1", "q3", "q4"], ["q5", "q0"], ["q6"], ["q2"]]
    assert np.array_equal(inline, queued)


# -- robustness (findings of a review: each of these failed or hung before) -----------------------

class ShapeLane(GateLane):
    """A lane that answers with something that is not one row per payload."""

    def __init__(self, answer, **kw):
        super().__init__(**kw)
        self.answer = answer

    def run(self, payloads, requests=1):
        super().run(payloads)
        return self.answer(payloads)


@pytest.mark.parametrize("answer", [
    lambda p: [1.0] * (len(p) + 1),                          # wrong number of rows
    lambda p: "not rows",                                    # not an array at all
])
def test_a_lane_answering_garbage_fails_its_requests_and_the_worker_goes_on(answer):
    lane = ShapeLane(answer, max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    bad = q.submit(job(lane, "bad", [1]))
    lane.step()
    with pytest.raises(RuntimeError):
        q.wait(bad, 10)
    good_lane = GateLane()
    good = q.submit(job(good_lane, "good", [1]))
    good_lane.step()
    assert q.wait(good, 10)[0].shape == (1, 1)
    assert q.stats().queued["tokens"] == 0 and q.stats().worker_alive


class BrokenBudgetLane(GateLane):
    """A lane whose batch budget cannot be read: forming a batch of two items raises (a bug
    in a lane, not an input)."""

    @property
    def batch_budget(self):
        raise AttributeError("no budget")

    @batch_budget.setter
    def batch_budget(self, value):
        pass


def test_a_batch_that_cannot_be_formed_fails_the_queued_requests_at_once_and_the_worker_goes_on():
    """Nothing waits for its time-out behind a worker that cannot form batches: the queued
    requests fail with the error a failed batch gives, the accounting returns to zero, and the
    next request is served."""
    broken = GateLane(key="broken")
    q = InferenceQueue({"tokens": 1000})
    broken.__class__ = BrokenBudgetLane
    t0 = time.perf_counter()
    bad = q.submit(job(broken, "bad", [1, 1, 1]))
    with pytest.raises(RuntimeError, match="inference failed"):
        q.wait(bad, 10)
    assert time.perf_counter() - t0 < 5
    assert q.stats().queued["tokens"] == 0 and q.stats().jobs == 0 and q.stats().worker_alive
    good_lane = GateLane()
    good = q.submit(job(good_lane, "good", [1, 2]))
    good_lane.step()
    assert np.array_equal(q.wait(good, 10)[0], rows_of(["good0", "good1"]))


def test_rows_of_another_width_in_a_later_batch_fail_that_request_only():
    widths = iter([2, 3])
    lane = ShapeLane(lambda p: np.zeros((len(p), next(widths))), max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    j = q.submit(job(lane, "w", [1, 1]))
    lane.step(2)
    with pytest.raises(RuntimeError):
        q.wait(j, 10)
    assert q.stats().queued["tokens"] == 0 and q.stats().jobs == 0 and q.stats().worker_alive


def test_empty_work_keeps_its_place_in_the_outputs():
    """finish() gets one entry per Work, empty ones included, exactly as run_inline gives."""
    from embedding_core.backends import run_inline

    one, two = GateLane(key="one"), GateLane(key="two")
    prepared = Prepared([Work(one, [], []), Work(two, ["x", "y"], [1, 2])],
                        lambda out: Encoded(out[1], len(out[0])))
    q = InferenceQueue({"tokens": 1000})
    j = q.submit(prepared)
    two.step()
    queued = q.wait(j, 10)
    assert [o.shape for o in queued] == [(0, 0), (2, 1)]
    two.gate.release()
    inline = run_inline(prepared)
    assert inline.prompt_tokens == 0 and np.array_equal(inline.vectors, queued[1])
    empty = q.submit(Prepared([Work(one, [], [])], lambda out: Encoded(out[0], 0)))
    assert [o.shape for o in q.wait(empty, 1)] == [(0, 0)]


def test_a_worker_that_cannot_start_leaves_nothing_queued(monkeypatch):
    q = InferenceQueue({"tokens": 10})

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            q.submit(job(GateLane(), "x", [5]))
    monkeypatch.undo()
    assert q.stats().queued.get("tokens", 0) == 0 and q.stats().jobs == 0
    lane = GateLane()
    j = q.submit(job(lane, "ok", [10]))                  # the whole bound is still free
    lane.step()
    assert q.wait(j, 10)[0].shape == (1, 1)


def test_a_finished_result_is_returned_even_at_the_deadline():
    lane = GateLane()
    q = InferenceQueue({"tokens": 100})
    j = q.submit(job(lane, "a", [1]))
    lane.step()
    assert j.done.wait(10)
    assert q.wait(j, 0)[0].shape == (1, 1)
    assert q.cancel(j) is False                          # too late to cancel: the result stands


def test_admission_refuses_what_could_not_finish_in_time():
    """Round-robin serves every admitted request in turn, so a request is admitted only if the
    queue, at its measured rate, can finish it within max_wait_s; else 429, bounded."""
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 10**6}, max_wait_s=10)
    q._rates["tokens"] = 100.0                           # 100 tokens/s measured
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    first = q.submit(job(lane, "a", [600]))               # 6 s of work: admitted
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "b", [600]))                   # 12 s for both: refused
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "2"
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "c", [100_000]))               # 1,006 s: refused, Retry-After capped
    assert exc.value.headers["Retry-After"] == "10"
    lane.gate.release()
    lane.step()
    wait_all(q, [running, first])
    alone = q.submit(job(lane, "alone", [100_000]))       # an empty queue admits any request
    lane.step()
    q.wait(alone, 10)


def test_a_small_request_is_admitted_behind_a_large_one_that_alone_exceeds_max_wait():
    """A lone request is admitted whatever its estimate; behind it, round-robin serves a small
    request within a turn, so the small one is admitted (it was refused with the whole queue's
    drain time, for as long as the large one had more than max_wait_s left). A larger newcomer
    is still judged on everything queued, and a small one is refused when the jobs ahead of it
    are too many for it to finish in time."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 10**6}, max_wait_s=10)
    q._rates["tokens"] = 100.0                           # 100 tokens/s: a turn is 1 s
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    big = q.submit(job(lane, "big", [100] * 20))          # 20 s, alone: admitted
    small = q.submit(job(lane, "s", [10]))                # 0.1 s + one turn of big: admitted
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "m", [150]))                   # 1.5 s: 21.6 s with the rest: refused
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "10"  # capped
    others = [q.submit(job(lane, f"o{i}", [60])) for i in range(14)]  # 0.6 s each: admitted
    with pytest.raises(ApiError) as exc:   # 0.9 s + 1 (a turn of big) + 0.1 + 14 x 0.6 = 10.4 s
        q.submit(job(lane, "x", [10] * 9))
    # 0.4 s over, but refused after "m": told to come back after m's turn (capped at 10)
    assert exc.value.headers["Retry-After"] == "10"
    fits = q.submit(job(lane, "y", [10]))  # 0.1 + 1 + 0.1 + 8.4 = 9.6 s
    lane.gate.release()
    lane.step(20 + 1 + 14 + 1)
    wait_all(q, [running, big, small, *others, fits])
    assert lane.batches.index(["s0"]) < lane.batches.index(["big1"])   # served in the first turn


def test_requests_refused_in_a_burst_are_told_to_come_back_one_after_another():
    """Each refusal of a burst was told the same Retry-After; they all came back together and
    most were refused again (with the openai SDK's two retries, half the burst failed). Now the
    k-th is told to come back after the work of the k-1 refused before it."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 1000}, max_wait_s=150)
    q._rates["tokens"] = 100.0                           # 100 tokens/s
    q._clock = lambda: 1000.0                            # the slots, not the test's speed
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    full = q.submit(job(lane, "full", [100] * 9 + [99]))  # 999 tokens queued
    told = []
    for i in range(4):
        with pytest.raises(ApiError) as exc:
            q.submit(job(lane, f"b{i}", [100, 100]))      # 199 over the bound, then 2 s each
        told.append(int(exc.value.headers["Retry-After"]))
    assert told == [2, 4, 6, 8]
    with pytest.raises(ApiError) as exc:                 # the precheck takes its slot too
        q.precheck({"tokens": 6}, {"tokens": 200})
    assert exc.value.headers["Retry-After"] == "10"
    lane.gate.release()
    lane.step(10)
    wait_all(q, [running, full])


def test_a_client_that_does_not_wait_cannot_push_the_others_slots_far():
    """Every refusal takes a slot, so a client retrying without waiting (or refused clients that
    never come back) pushed every other refusal's Retry-After to the 120 s cap, where the queue
    needed a fraction of a second (second look at the diff, F1). The slots now reach no further
    than the queue's whole bound drained once after the wait."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 1000}, max_wait_s=150)
    q._rates["tokens"] = 200.0                           # the bound drains in 5 s
    now = [1000.0]
    q._clock = lambda: now[0]
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    full = q.submit(job(lane, "full", [98] * 10))         # 980 queued
    for _ in range(200):                                 # 10 s of a client that never waits
        with pytest.raises(ApiError):
            q.precheck({"tokens": 100}, {"tokens": 500})
        now[0] += 0.05
    with pytest.raises(ApiError) as exc:                 # needs 0.1 s by the queue's estimate
        q.submit(job(lane, "polite", [40]))
    assert int(exc.value.headers["Retry-After"]) <= 6     # was 120
    lane.gate.release()
    lane.step(10)
    wait_all(q, [running, full])


def test_a_retry_after_never_exceeds_what_the_openai_sdk_honours():
    """The openai SDK does not retry at all when told more than 120 s; the cap was 3/4 of the
    time-out (150 s by default)."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 10**6}, max_wait_s=150)
    q._rates["tokens"] = 100.0
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    big = q.submit(job(lane, "big", [100] * 300))        # 300 s, alone: admitted
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "more", [100] * 20))          # 320 s queued: 170 s over
    assert exc.value.headers["Retry-After"] == "120"
    q.cancel(big)
    lane.gate.release()
    wait_all(q, [running])


def test_the_precheck_tells_the_wait_for_the_likely_cost_not_the_lower_bound():
    """The precheck refuses on a lower bound (3 tokens an input); its Retry-After came from that
    bound too: 1 s where the request needed 5, so the retry was tokenised and refused again."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 1000})
    q._rates["tokens"] = 100.0
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    full = q.submit(job(lane, "full", [100] * 9 + [99]))
    with pytest.raises(ApiError) as exc:
        q.precheck({"tokens": 6}, {"tokens": 500})       # 2 inputs of ~250 tokens
    assert exc.value.headers["Retry-After"] == "5"
    q.precheck({"tokens": 1}, {"tokens": 500})           # fits at the lower bound: admitted
    lane.gate.release()
    lane.step(10)
    wait_all(q, [running, full])


def test_requests_being_prepared_count_against_the_bound_at_the_precheck_only():
    """A burst arriving at an empty queue all passed the precheck, all tokenised (seconds of CPU
    on the cores the queue needs) and most were then refused. Requests between precheck and
    submit now count at the precheck with their likely cost; admission still counts only what
    is queued."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 1000})
    q._rates["tokens"] = 100.0
    running = q.submit(job(lane, "r", [1]))              # holds the worker
    assert lane.entered.acquire(timeout=10)
    a = q.precheck({"tokens": 10}, {"tokens": 600})
    b = q.precheck({"tokens": 10}, {"tokens": 300})
    with pytest.raises(ApiError) as exc:                 # 900 being prepared + 600 likely
        q.precheck({"tokens": 200}, {"tokens": 600})
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "5"
    assert q.stats().queued.get("tokens", 0) == 0
    assert q.stats().preparing == {"tokens": 900}        # what /health shows beside it
    j = q.submit(job(lane, "a", [100] * 9))              # admitted: 900 queued, preparing aside
    q.prepared(a)
    q.prepared(b)
    with pytest.raises(ApiError):                        # now the queued tokens refuse it
        q.precheck({"tokens": 200}, {"tokens": 600})
    lane.gate.release()
    lane.step(9)
    wait_all(q, [running, j])
    q.prepared(q.precheck({"tokens": 200}, {"tokens": 600}))   # drained: passes
    assert q._preparing["tokens"] == 0 and q.stats().preparing == {}


def test_a_refusal_behind_pictures_being_decoded_counts_their_decoding():
    """Pictures queue only once decoded: a one-picture request refused behind two requests of 64
    pictures being decoded was told Retry-After 1, 27 times over 13.5 s (review h_chaos1 F3).
    The wait now counts their decoding, at the wall time per picture measured on the requests
    prepared here (side by side), then the run of what must drain; /health shows them."""
    q = InferenceQueue({"images": 128})
    q._rates["images"] = 100.0
    assert q._prep_s("images") == 0.05                       # until measured
    q.prepared(q.precheck({"images": 64}), 12.8)             # 64 pictures in 12.8 s
    assert q._prep_s("images") == pytest.approx(0.2, rel=0.01)
    for _ in range(10):                                      # one-picture requests meanwhile
        q.prepared(q.precheck({"images": 1}), 0.01)
    assert q._prep_s("images") == pytest.approx(0.17, abs=0.01)   # they weigh one picture each
    q._prep["images"] = [1.0, 0.2]
    a, b = q.precheck({"images": 64}), q.precheck({"images": 64})
    assert q.stats().preparing == {"images": 128}
    with pytest.raises(ApiError) as exc:
        q.precheck({"images": 1})
    # 64 pictures each, side by side, at 0.2 s: 12.8 s; then one picture's run: 0.01 s
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "13"
    q.prepared(a)
    q.prepared(b)                                            # failed: nothing measured
    assert q._prep_s("images") == 0.2 and q.stats().preparing == {}
    q.prepared(q.precheck({"images": 1}))                    # room again


def test_likely_cost_counts_about_four_characters_a_token_capped_per_input():
    from embedding_core.pipeline import likely_cost
    from embedding_core.schema import EmbeddingsRequest

    def request(inputs):
        r = EmbeddingsRequest.__new__(EmbeddingsRequest)
        r.modality, r.inputs = "text", inputs
        return r
    assert likely_cost(request(["x" * 400, "hi"]), 256) == {"tokens": 102 + 3}
    assert likely_cost(request(["x" * 40_000]), 256) == {"tokens": 258}
    assert likely_cost(request([[101, 2023, 102], "abcd"]), None) == {"tokens": 5 + 3}
    assert likely_cost(request(["", "ab"]), 256) == {"tokens": 3 + 3}    # the lower bound


def test_a_cold_start_admits_two_requests_of_the_largest_size():
    """Before any batch is measured the queue assumes a rate. At 2,000 tokens/s for the process
    a second request of the largest allowed size behind the first was refused at a cold start
    (524,288 tokens: 262 s against 150), with a Retry-After of minutes, for work this 2-core
    machine does in about a minute. Now 2,000 per worker (one per core): with two, the default
    token bound decides; with one, the second is still refused (it could time out there)."""
    from embedding_core.service import QUEUE_WAIT_SHARE
    from embedding_core.settings import Settings

    s = Settings.from_env({})
    lane = GateLane(max_batch_items=1, batch_budget=10**6)
    q = InferenceQueue({"tokens": s.max_queue_tokens},
                       max_wait_s=QUEUE_WAIT_SHARE * s.request_timeout_s, workers=2)
    running = q.submit(job(lane, "r", [1]))                # holds the worker (too small to rate)
    assert lane.entered.acquire(timeout=10)
    first = q.submit(job(lane, "a", [s.max_request_tokens]))
    second = q.submit(job(lane, "b", [s.max_request_tokens]))
    with pytest.raises(ApiError) as exc:                 # the token bound refuses a third
        q.submit(job(lane, "c", [100]))
    assert exc.value.status == 429
    lane.gate.release()
    lane.step(2)
    wait_all(q, [running, first, second])
    one = InferenceQueue({"tokens": s.max_queue_tokens},
                         max_wait_s=QUEUE_WAIT_SHARE * s.request_timeout_s, workers=1)
    running = one.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    first = one.submit(job(lane, "a", [s.max_request_tokens]))
    with pytest.raises(ApiError) as exc:
        one.submit(job(lane, "b", [s.max_request_tokens]))
    assert exc.value.status == 429
    lane.gate.release()
    lane.step(1)
    wait_all(one, [running, first])


def test_a_worker_that_cannot_start_leaves_the_others_serving(monkeypatch, caplog):
    """A thread limit ("can't start new thread") once failed every request with a 500 while the
    workers already started ran on, unknown to the queue: every request started another set."""
    from conftest import refuse_thread_start

    refuse_thread_start(monkeypatch, lambda name: name == "w-1")
    lane = GateLane()
    q = InferenceQueue({"tokens": 100}, workers=2, name="w")
    for name in ("a", "b", "c"):
        j = q.submit(job(lane, name, [1]))
        lane.step()
        q.wait(j, 10)
    # A lone request is not split for the worker that does not exist (it ran in halves, one
    # after the other)
    j = q.submit(job(lane, "d", [1, 1, 1, 1]))
    lane.step()
    q.wait(j, 10)
    assert lane.batches[-1] == ["d0", "d1", "d2", "d3"]
    assert [t.name for t in threading.enumerate() if t.name.startswith("w-")] == ["w-0"]
    assert [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()] == [
        "inference queue: could not start worker w-1; running on 1"]
    q.stop()


def test_small_requests_use_only_the_time_an_admitted_request_has_to_spare():
    """Small requests are admitted behind a large one only while it still finishes by its
    deadline: a burst of them had pushed an admitted large request past its time-out (a 503
    after its batches ran; review h_diff2 F1)."""
    lane = GateLane(max_batch_items=1, batch_budget=100)
    q = InferenceQueue({"tokens": 10**6}, max_wait_s=10)
    q._rates["tokens"] = 100.0                           # 100 tokens/s
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    big = q.submit(job(lane, "big", [100] * 9), deadline=time.perf_counter() + 12)  # 9 s of 12
    small = [q.submit(job(lane, f"s{i}", [40])) for i in range(7)]   # 0.4 s each: 11.8 s
    with pytest.raises(ApiError) as exc:                               # 12.2 s: late
        q.submit(job(lane, "late", [40]))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "10"  # capped
    lane.gate.release()
    lane.step(9 + 7)
    wait_all(q, [running, big, *small])


class Clock:
    """time.perf_counter for the queue, advanced only by ClockLane."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class ClockLane:
    """A lane whose payloads are their token counts: a batch takes RUN_S plus its tokens at
    RATE tokens/s of the Clock; its first batch also creates a session (one-off, 0.5 s)."""

    unit, key, max_batch_items, batch_budget = "tokens", "clock", 10**6, 10**6
    RATE, RUN_S = 4000.0, 0.002

    def __init__(self, clock):
        self.clock = clock
        self.cold = True

    def run(self, payloads, requests=1):
        if self.cold:
            self.cold = False
            with one_off():
                self.clock.now += 0.5
        self.clock.now += self.RUN_S + sum(payloads) / self.RATE
        return np.zeros((len(payloads), 1))


def test_the_measured_rate_leaves_out_one_off_work_and_small_batches(monkeypatch):
    """Creating a session in the first batch after a cold start made the rate ten times too
    low for the next twenty batches (429s telling clients to come back in minutes for work of a
    second); and one-sentence batches, dominated by a run's fixed cost, measure a fraction of
    the batched rate. A batch with one-off work is no sample at all (removing its share of the
    one-off time could make the rate 1.7 times too high: h_diff5 F2)."""
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    lane = ClockLane(clock)
    q = InferenceQueue({"tokens": 10**6})

    def run(tokens):
        q.wait(q.submit(Prepared([Work(lane, list(tokens), list(tokens))],
                                 lambda out: Encoded(out[0], 0))), 10)
        return q.stats().rates["tokens"]

    assumed = q.stats().rates["tokens"]
    assert run([1000]) == assumed                         # one-off work inside: no sample
    for _ in range(10):
        assert run([8]) == assumed                        # 8 tokens: not counted
    assert run([32, 32]) == pytest.approx(64 / 0.018)     # counted
    assert run([1000]) == pytest.approx((0.8 * 64 + 1000) / (0.8 * 0.018 + 0.252))


def test_a_request_that_could_not_finish_even_alone_is_refused_with_a_422_before_it_runs(
        monkeypatch, caplog):
    """A request under the token cap that the instance is too slow to run within the time-out
    (a slower CPU than the cap was chosen for, or a raised cap) ran until the time-out and got a
    503 that clients retry in full: three or four time-outs billed for one refusal. Once the
    rate is measured, one that needs more than twice its time even alone gets a 422 (clients do
    not retry it) naming the setting and a size that fits, before anything runs."""
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    lane = ClockLane(clock)
    q = InferenceQueue({"tokens": 10**6}, max_wait_s=1.0)

    def prepared(tokens):
        return Prepared([Work(lane, list(tokens), list(tokens))], lambda out: Encoded(out[0], 0))

    # Before the rate is measured (the assumed one is deliberately low; the first batches run
    # slow): run, not refused.
    q.run(prepared([3000, 3000, 3000]), 1.0, 1.0)       # creates the session: no sample
    for _ in range(RATE_TRUSTED_SAMPLES - 1):
        q.run(prepared([1000]), 1.0, 1.0)
    assert q.stats().measured == frozenset()
    q.run(prepared([1000]), 1.0, 1.0)
    assert q.stats().measured == {"tokens"}
    rate = q.stats().rates["tokens"]
    assert 3900 < rate < 4000                          # ClockLane's 4,000 tokens/s
    runs = clock.now
    with pytest.raises(ApiError) as exc:
        q.start(prepared([3000, 3000, 3000]), 1.0, 1.0)   # 9,000 tokens: ~2.3 s alone
    err = exc.value
    assert err.status == 422 and err.target == "input" and "Retry-After" not in err.headers
    assert "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS" in err.message
    assert "a retry would fail the same way" in err.message
    assert f"at the {rate:,.0f} tokens/s measured here" in err.message
    assert f"at most about {int(rate * 0.5):,} tokens" in err.message   # half the limit
    assert clock.now == runs and q.stats().jobs == 0 and q.stats().queued["tokens"] == 0
    # Preparing it took most of its time: the time it has left is what counts, and is named.
    with pytest.raises(ApiError) as exc:
        q.start(prepared([3000, 3000]), 0.7, 200.0)
    assert "the 0.7 s left to it of the 200 s a request may take" in exc.value.message
    # Under twice its time: run (the estimate errs; it may finish).
    q.run(prepared([2500, 2500, 2500]), 1.0, 1.0)
    assert clock.now > runs
    # The operator is told what to change, once a minute at most (no 5xx shows it any more).
    warned = [r.getMessage() for r in caplog.records if "was refused (422)" in r.getMessage()]
    assert len(warned) == 1 and "EMBEDDINGS_MAX_REQUEST_TOKENS (to about" in warned[0]


def test_a_request_that_times_out_needing_more_than_its_time_alone_gets_a_422_not_a_503():
    """At its time-out, a request whose own work needs over 1.25 times the time it had, at the
    rate measured then for its model, could not succeed on a retry: a 422 that says so. One
    that timed out behind others, or needing at most 1.25 times its time (it may have been late
    because of the others), still gets the 503 and its Retry-After."""
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    q._lane_rates[lane.key] = [100.0, 1.0, RATE_TRUSTED_SAMPLES]   # 100 tokens/s measured
    big = q.start(job(lane, "big", [5, 5, 5]), 0.1, 0.1)    # 0.15 s alone: admitted
    assert lane.entered.acquire(timeout=10)                 # and running, past its time
    with pytest.raises(ApiError) as exc:
        q.wait(big, 0.1, 0.1)
    assert exc.value.status == 422 and "Retry-After" not in exc.value.headers
    assert "needs about 0.15 s" in exc.value.message
    assert "15 tokens at the 100 tokens/s measured here" in exc.value.message
    for name, costs in (("small", [1]), ("near", [6, 6])):  # 0.01 s; 0.12 s of 0.1
        late = q.start(job(lane, name, costs), 0.1, 0.1)
        with pytest.raises(ApiError) as exc:
            q.wait(late, 0.1, 0.1)
        assert exc.value.status == 503 and "Retry-After" in exc.value.headers, name
    lane.gate.release()
    assert q.stats().jobs == 0


class TimedLane:
    """Each batch takes ``seconds``: burning CPU, or sleeping (a thread that waits for a CPU
    someone else holds: wall time passes, its own CPU time does not). The burning share is
    counted in this thread's CPU time, so the rate per CPU second the queue measures is the
    same on a busy machine (a wall-clock burn got half the CPU beside a busy process, and the
    queue measured twice the rate)."""

    unit = "tokens"
    max_batch_items = 1
    batch_budget = 10**6

    def __init__(self, key, seconds, burn):
        self.key, self.seconds, self.burn = key, seconds, burn   # burn: the share computing

    def run(self, payloads, requests=1):
        end = time.thread_time() + self.seconds * self.burn
        while time.thread_time() < end:
            pass
        time.sleep(self.seconds * (1 - self.burn))
        return rows_of(payloads)


def test_a_client_time_out_is_judged_at_the_rate_per_cpu_second_which_contention_does_not_lower():
    """Two lanes with the same elapsed time per batch (5,000 tokens/s): one spends it computing,
    the other waiting for a CPU (contention, steal). A request of 2,000 tokens for a client of
    0.1 s needs 0.4 s at the first lane's rate: refused (over twice 0.1 s); the second lane
    spent no CPU time on it, so nothing says it would be slow there: admitted (reviews h_diff9
    F2, h_diff10 N2: a rate of elapsed time measured beside busy processes refused requests
    that then ran 5-8 times faster)."""
    q = InferenceQueue({"tokens": 10**6}, workers=1)
    busy, waiting = TimedLane("busy", 0.02, 1.0), TimedLane("waiting", 0.02, 0.0)
    for lane in (busy, waiting):
        for i in range(RATE_TRUSTED_SAMPLES + 2):
            assert q.wait(q.submit(job(lane, f"w{i}", [100])), 10)[0].shape == (1, 1)
    with pytest.raises(ApiError) as exc:
        q.start(job(busy, "big", [2000]), 100, 100, wait_s=0.1, client_s=0.1)
    assert exc.value.status == 422, exc.value
    msg = exc.value.message
    assert "the 0.1 s its client waits" in msg and "2,000 tokens at up to" in msg, msg
    assert "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS" not in msg, msg
    admitted = q.start(job(waiting, "big", [2000]), 100, 100, wait_s=0.1, client_s=0.1)
    q.cancel(admitted)
    # judged on the client's whole time-out, not what preparing left of it (h_diff9 F1)
    late = q.start(job(busy, "late", [900]), 100, 100, wait_s=0.001, client_s=0.1)  # 0.18 s
    q.cancel(late)
    q.stop()


def test_a_client_time_out_counts_the_cores_and_advises_at_the_slower_rate():
    """The rate per CPU second counts once per core the runs can use, not per worker (more
    workers than cores share them; one worker may run a session of several threads; review
    h_diff11 H1, H4). The size the 422 advises is at the rate of elapsed time when that is
    slower: the deciding rate ignores contention by design, and a client following advice
    sized at it got a 499 (H2)."""
    half = TimedLane("half", 0.02, 0.5)      # 5,000 tokens/s elapsed, 10,000 per CPU second
    q = InferenceQueue({"tokens": 10**6}, workers=4, cores=1)
    for i in range(RATE_TRUSTED_SAMPLES + 2):
        assert q.wait(q.submit(job(half, f"w{i}", [100])), 10)[0].shape == (1, 1)
    with pytest.raises(ApiError) as exc:     # 0.3 s per CPU second on one core: over 2 × 0.1 s
        q.start(job(half, "big", [3000]), 100, 100, wait_s=0.1, client_s=0.1)
    msg = exc.value.message                  # (at 4 workers' worth: 0.075 s, admitted)
    advised = int(msg.rsplit("at most about ", 1)[1].split(" ")[0].replace(",", ""))
    assert advised < 0.7 * 500, msg          # 500 at 10,000/s; ~250 at 5,000/s
    q.stop()


def test_a_model_is_judged_too_slow_at_its_own_rate_not_another_deployments():
    """Deployments share the unit (tokens), not the speed: the exact model runs at ~0.6 of the
    default's. A request to the fast one must not be refused because of the slow one's rate."""
    fast, slow = GateLane(key="fast", max_batch_items=1), GateLane(key="slow", max_batch_items=1)
    q = InferenceQueue({"tokens": 10**6})
    q._lane_rates["fast"] = [1000.0, 1.0, RATE_TRUSTED_SAMPLES]
    q._lane_rates["slow"] = [100.0, 1.0, RATE_TRUSTED_SAMPLES]
    with pytest.raises(ApiError) as exc:
        q.start(job(slow, "s", [150]), 0.5, 0.5)        # 1.5 s of 0.5 s
    assert exc.value.status == 422 and "150 tokens at the 100 tokens/s" in exc.value.message
    ok = q.start(job(fast, "f", [150]), 0.5, 0.5)       # 0.15 s: admitted
    fast.step()
    assert q.wait(ok, 10)[0].shape == (1, 1)
    unmeasured = GateLane(key="new", max_batch_items=1)  # no rate of its own yet: run
    other = q.start(job(unmeasured, "n", [10**5]), 0.5, 0.5)
    q.cancel(other)
    unmeasured.gate.release()
    q.stop()


def test_precheck_refuses_a_full_queue_before_any_work():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 100})
    block = q.submit(job(lane, "b", [1]))
    assert lane.entered.acquire(timeout=10)
    held = q.submit(job(lane, "h", [99]))
    q.precheck({"tokens": 1})
    with pytest.raises(ApiError) as exc:
        q.precheck({"tokens": 2})
    assert exc.value.status == 429
    lane.gate.release()
    lane.step()
    wait_all(q, [block, held])


def test_stop_fails_queued_requests_and_joins_the_worker():
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 100}, name="test-stop-worker")
    running = q.submit(job(lane, "r", [1]))
    assert lane.entered.acquire(timeout=10)
    queued = q.submit(job(lane, "q", [1]))
    stopper = threading.Thread(target=q.stop)
    stopper.start()
    with pytest.raises(ApiError) as exc:
        q.wait(queued, 10)
    assert exc.value.status == 503
    lane.gate.release()                                    # the running batch finishes
    stopper.join(10)
    assert q.wait(running, 1)[0].shape == (1, 1)
    assert not q.stats().worker_alive
    with pytest.raises(ApiError) as exc:
        q.submit(job(lane, "late", [1]))
    assert exc.value.status == 503


@pytest.mark.parametrize("env, message", [
    ({"EMBEDDINGS_MAX_QUEUE_IMAGES": "10", "EMBEDDINGS_MAX_IMAGE_INPUTS": "64"},
     "EMBEDDINGS_MAX_QUEUE_IMAGES must be >= EMBEDDINGS_MAX_IMAGE_INPUTS"),
    ({"EMBEDDINGS_MAX_QUEUE_TOKENS": "1000", "EMBEDDINGS_MAX_REQUEST_TOKENS": "2000"},
     "EMBEDDINGS_MAX_QUEUE_TOKENS must be >= EMBEDDINGS_MAX_REQUEST_TOKENS"),
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "0"}, "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS must be >= 1, got 0"),
    # a negative one names the same bound (it said ">= 0", and 0 was then refused as well)
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "-1"}, "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS must be >= 1, got -1"),
    ({"EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS": "-1"}, "EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS must be >= 0, got -1"),
    # float() reads these; the first made every request a 500, the second every 429 a 500
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "nan"}, "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS must be a finite number"),
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "inf"}, "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS must be a finite number"),
    ({"EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS": "inf"}, "EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS must be a finite number"),
    # mallopt takes a C int: 2**32 would reach glibc as 0
    ({"EMBEDDINGS_MALLOC_MMAP_THRESHOLD": str(2**32)}, "EMBEDDINGS_MALLOC_MMAP_THRESHOLD must be <= 2147483647"),
    ({"EMBEDDINGS_MALLOC_ARENA_MAX": str(2**31)}, "EMBEDDINGS_MALLOC_ARENA_MAX must be <= 2147483647"),
    # Retry-After: 0 would have clients (and a failed model load's retries) come back at once
    ({"EMBEDDINGS_RETRY_AFTER_SECONDS": "0"}, "EMBEDDINGS_RETRY_AFTER_SECONDS must be >= 1"),
])
def test_settings_that_could_never_work_are_refused(env, message):
    from embedding_core.settings import Settings

    with pytest.raises(ValueError) as exc:
        Settings.from_env(env)
    assert message in str(exc.value)


def test_request_pixels_may_equal_image_pixels():
    """The refusal of request pixels below image pixels tells operators to lower both: equal
    values must then be accepted (h_mut1)."""
    from embedding_core.settings import Settings

    s = Settings.from_env({"EMBEDDINGS_MAX_IMAGE_PIXELS": "1000000",
                           "EMBEDDINGS_MAX_REQUEST_PIXELS": "1000000"})
    assert s.max_request_pixels == s.max_image_pixels == 1_000_000


@pytest.mark.parametrize("name, field", [
    ("EMBEDDINGS_MAX_QUEUE_TOKENS", "max_queue_tokens"),
    ("EMBEDDINGS_MAX_QUEUE_IMAGES", "max_queue_images"),
    ("EMBEDDINGS_REQUEST_TIMEOUT_SECONDS", "request_timeout_s"),
    ("EMBEDDINGS_MAX_REQUEST_TOKENS", "max_request_tokens"),
    ("EMBEDDINGS_RETRY_AFTER_SECONDS", "retry_after_s"),
    ("EMBEDDINGS_MAX_INPUTS", "max_inputs"),
    ("EMBEDDINGS_MAX_IMAGE_INPUTS", "max_image_inputs"),
    ("EMBEDDINGS_BATCH_TOKEN_BUDGET", "batch_token_budget"),
    ("EMBEDDINGS_MAX_BATCH_SIZE", "max_batch_size"),
])
def test_the_readmes_admission_defaults_are_the_codes(name, field):
    """infra/ sets none of these, so the README's default is what runs on Azure (h_mut1: a
    changed default survived the suite)."""
    import re
    from pathlib import Path
    from embedding_core.settings import Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    documented = re.search(rf"^\| `{name}` \| ([0-9.]+) \|", readme, re.MULTILINE).group(1)
    assert float(documented) == float(getattr(Settings.from_env({}), field))


@pytest.mark.parametrize("seconds, warned", [("229", False), ("230", True), ("600", True)])
def test_a_time_out_beyond_azures_front_end_is_accepted_with_a_warning(seconds, warned, caplog):
    """Azure answers an HTTP request itself after 230 s; a longer time-out still works under the
    local host, so it is not refused, but the operator is told what it does on Azure."""
    from embedding_core.settings import Settings, forget_warnings

    forget_warnings()
    with caplog.at_level(logging.WARNING, logger="embedding_core.settings"):
        s = Settings.from_env({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": seconds})
    assert s.request_timeout_s == float(seconds)
    lines = [r.getMessage() for r in caplog.records if "front-end limit" in r.getMessage()]
    assert bool(lines) == warned
    if warned:
        assert f"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS={seconds}" in lines[0]


@pytest.mark.parametrize("env, warned", [
    ({}, False),                                                   # 262,144 tokens, 200 s
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "10"}, True),
    ({"EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "10", "EMBEDDINGS_MAX_REQUEST_TOKENS": "20000",
      "EMBEDDINGS_MAX_QUEUE_TOKENS": "40000"}, False),
])
def test_a_request_cap_the_time_out_may_not_allow_is_warned_about(env, warned, caplog):
    """With a time-out too short for the request cap, the largest requests are refused (422),
    some only after running until the time-out (before the rate is measured a lone request is
    admitted whatever its estimate): the operator is told at start (review h_retry F3)."""
    from embedding_core.service import EmbeddingService
    from embedding_core.settings import Settings

    with caplog.at_level(logging.WARNING, logger="embedding_core"):
        EmbeddingService(Settings.from_env(env))
    lines = [r.getMessage() for r in caplog.records
             if "may not finish within" in r.getMessage()]
    assert bool(lines) == warned, lines


# -- several workers -------------------------------------------------------------------------------

def test_two_workers_run_two_batches_at_once_and_split_a_lone_request():
    """With two idle workers, a request is cut so that both run part of it at the same time
    (each takes its share of what is queued); the rows still come back in item order."""
    lane = GateLane(max_batch_items=32, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6}, workers=2)
    t0 = time.perf_counter()
    j = q.submit(job(lane, "a", [5, 5, 5, 5]))
    assert lane.entered.acquire(timeout=10) and lane.entered.acquire(timeout=10)  # both running
    assert sorted(map(len, lane.batches)) == [2, 2]
    assert q.stats().queued["tokens"] == 0 and q.stats().jobs == 1
    time.sleep(0.2)                  # both batches hold the request for 0.2 s at once
    lane.gate.release()
    lane.gate.release()
    out = q.wait(j, 10)[0]
    assert np.array_equal(out, rows_of([f"a{i}" for i in range(4)]))
    # Its inference time (x-inference-time) counts that time once, not once per worker.
    assert j.batches == 2 and 0.2 <= j.inference_s <= time.perf_counter() - t0
    q.stop()


@pytest.mark.parametrize("ends, expected", [
    ("together", 200 / 1.0),                                 # 200 tokens in 1 s (was 129)
    ("one_after_the_other", (0.8 * 100 + 100) / (0.8 * 0.5 + 1.5)),   # 94.7 (was 75)
])
def test_with_two_workers_the_rate_is_the_process_throughput(ends, expected, monkeypatch):
    """Each batch counts its share of the time it ran (dt / batches running). Dividing a
    batch's elapsed time by the batches running when it ended counted two side-by-side
    batches' overlap 1.5 times: the rate came out 0.64-0.79 of it here, and the estimates that
    refuse a request as too slow (422), admit requests and set Retry-After were long.
    Two batches of 100 tokens start together; they end together after 1 s, or one after 1 s
    (its share: 0.5 s) and the other after 2 s (0.5 s shared + 1 s alone); the rate is a
    moving average (RATE_DECAY 0.8) of those samples."""
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    lane = GateLane(max_batch_items=1, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6}, workers=2)
    j = q.submit(job(lane, "a", [100, 100]))
    assert lane.entered.acquire(timeout=10) and lane.entered.acquire(timeout=10)  # both running

    def finish_one():
        done = q.stats().batches
        lane.gate.release()
        deadline = time.monotonic() + 10
        while q.stats().batches == done:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    clock.now += 1.0
    finish_one()
    if ends == "one_after_the_other":
        clock.now += 1.0
    finish_one()
    q.wait(j, 10)
    assert q.stats().rates["tokens"] == pytest.approx(expected)
    q.stop()


def test_a_batch_that_ran_alone_does_not_count_for_the_too_slow_rate(monkeypatch):
    """A one-input request cannot be split: its batch runs on one worker while the others idle,
    at 1/workers of what a large request split over every worker gets. After such traffic the
    too-slow 422 refused requests that would have finished (h_diff5 F1). Only batches that
    shared the process with the other workers count for it; the throughput (admission,
    /health) counts both."""
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    lane = GateLane(max_batch_items=1, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6}, workers=2)

    def run(costs, seconds):
        done = q.stats().batches + len(costs)
        j = q.submit(job(lane, "x", costs))
        for _ in costs:
            assert lane.entered.acquire(timeout=10)
        clock.now += seconds
        for _ in costs:
            lane.gate.release()
        q.wait(j, 10)
        deadline = time.monotonic() + 10
        while q.stats().batches < done:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    run([100], 1.0)                                   # alone: one worker's 100 tokens/s
    assert q.stats().rates["tokens"] == pytest.approx(100.0)
    assert lane.key not in q._lane_rates
    run([100, 100], 1.0)                              # side by side: the process's 200/s
    work, spent, batches = q._lane_rates[lane.key]
    assert batches == 2 and work / spent == pytest.approx(200.0)
    q.stop()


def test_with_two_workers_a_newcomer_is_served_while_a_large_request_runs():
    """Both workers busy with a large request: a one-input request arriving then is in the next
    batch either worker forms, ahead of the large request's remaining items."""
    lane = GateLane(max_batch_items=2, batch_budget=10**6)
    q = InferenceQueue({"tokens": 10**6}, workers=2)
    big = q.submit(job(lane, "big", [10] * 12))
    assert lane.entered.acquire(timeout=10) and lane.entered.acquire(timeout=10)
    small = q.submit(job(lane, "s", [10]))
    lane.gate.release()                                  # one of the two big batches ends
    assert lane.entered.acquire(timeout=10)              # the next batch starts...
    assert lane.batches[2][0] == "s0"                    # ...with the newcomer
    for _ in range(3):
        lane.gate.release()
    lane.step(3)
    q.wait(small, 10)
    q.wait(big, 10)
    assert sum(len(b) for b in lane.batches) == 13
    q.stop()


def test_a_request_that_queued_and_timed_out_still_reports_its_queue_and_inference_time(
        registry, monkeypatch):
    from conftest import KEY, post

    from embedding_core.service import EmbeddingService
    from embedding_core.settings import Settings

    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": KEY,
                                              "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS": "1",
                                              "EMBEDDINGS_INFERENCE_WORKERS": "1"}), registry)
    assert post(svc, {"input": ["warm"]}).status == 200
    real = InferenceQueue._run_batch

    def slow(self, lane, taken):    # a batch slower than the request's whole time limit
        time.sleep(1.3)
        return real(self, lane, taken)
    monkeypatch.setattr(InferenceQueue, "_run_batch", slow)
    svc.queue.max_wait_s = None     # admitted (the time-out is tested, not the 429)
    res = post(svc, {"input": ["hello world"]})
    assert res.status == 503 and res.headers["x-ms-error-code"] == "ServiceUnavailable"
    queue_ms, inference_ms = (float(res.headers[h]) for h in ("x-queue-time", "x-inference-time"))
    assert 0 <= queue_ms < 1000 and inference_ms == 0   # its batch was still running
    svc.queue.stop()


def test_inference_workers_are_bounded(monkeypatch):
    """5000 were accepted, and the first request started 5000 threads with their sessions."""
    from embedding_core import settings
    from embedding_core.settings import Settings
    assert Settings.from_env({"EMBEDDINGS_INFERENCE_WORKERS": "32"}).workers == 32
    with pytest.raises(ValueError, match="EMBEDDINGS_INFERENCE_WORKERS must be <= 32, got 5000"):
        Settings.from_env({"EMBEDDINGS_INFERENCE_WORKERS": "5000"})
    monkeypatch.setattr(settings, "usable_cores", lambda: 48)   # the default is bounded too
    assert Settings.from_env({}).workers == 32


class BrokenLane(GateLane):
    """Every batch fails (a broken runtime, memory): what a persistent failure looks like."""

    def run(self, payloads, requests=1):
        self.batches.append(list(payloads))
        raise RuntimeError("onnxruntime: bad_alloc")


def test_a_persistent_failure_is_logged_once_a_minute_not_per_batch(caplog):
    """20 requests whose batches all fail the same way: each gets its 500 error, the log has one
    traceback for the error (the rest counted in its next line), and none per request."""
    import logging

    from embedding_core import service
    from embedding_core.api import ApiRequest
    from embedding_core.inference_queue import InferenceFailed

    lane = BrokenLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    with caplog.at_level(logging.DEBUG, logger="embedding_core"):
        for i in range(20):
            with pytest.raises(InferenceFailed):
                q.wait(q.submit(job(lane, f"r{i}", [1])), 10)
        # The request's own line stays at DEBUG: its batch's has the cause.
        res = service.run_request(ApiRequest("GET", "/x", {}, {}, b""), "azure", "x",
                                  lambda trace: q.wait(q.submit(job(lane, "last", [1])), 10))
    assert res.status == 500 and len(lane.batches) == 21
    errors_logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors_logged) == 1 and errors_logged[0].exc_info, \
        [r.getMessage() for r in errors_logged]
    assert "logged at most once a minute for this kind of error; 0 more since the last" \
        in errors_logged[0].getMessage()
    assert sum("inference batch of 1 items failed" in r.getMessage()
               for r in caplog.records if r.levelno == logging.DEBUG) == 20


class RandomLane:
    """Answers (request, item) per payload after a short run; fails any batch that holds a
    poisoned payload."""

    unit = "tokens"
    max_batch_items = 8
    batch_budget = 200

    def __init__(self, key):
        self.key = key

    def run(self, payloads, requests=1):
        time.sleep(0.0002 * len(payloads))
        if any(poisoned for _, _, poisoned in payloads):
            raise RuntimeError("poisoned input")
        return np.array([[j, i] for j, i, _ in payloads], dtype=np.float64)


@pytest.mark.parametrize("seed", [1, 2])
def test_many_threads_with_failures_and_time_outs_each_get_one_answer_and_the_queue_empties(seed):
    """Handler threads as the Functions worker's pool runs them, two workers, requests over one
    or two lanes, some holding an input that fails any batch, some with client time-outs that
    cancel them at random points, prechecks held while "tokenising": every request gets
    exactly one outcome (its own rows in order, a 429 with a Retry-After, a 503 time-out, or
    the failure, only where it holds a failing input), and at rest nothing is queued, held or
    running, and the workers are alive."""
    import random

    from embedding_core.inference_queue import InferenceFailed

    lanes = [RandomLane("a"), RandomLane("b")]
    q = InferenceQueue({"tokens": 3000}, max_wait_s=2.0, workers=2)
    outcomes: dict[int, list[str]] = {}
    problems: list[tuple] = []
    lock = threading.Lock()
    ids = iter(range(10**6))

    def answer(j, what):
        with lock:
            outcomes.setdefault(j, []).append(what)

    def one(rng):
        j = next(ids)
        n = rng.randint(1, 30)
        lane = rng.choice(lanes)
        bad = rng.randrange(n) if rng.random() < 0.1 else -1
        works = [Work(lane, [(j, i, i == bad) for i in range(n)],
                      [rng.randint(2, 50) for _ in range(n)])]
        if rng.random() < 0.2:                        # a second lane in the same request
            other = lanes[1] if lane is lanes[0] else lanes[0]
            m = rng.randint(1, 6)
            works.append(Work(other, [(j, 100 + i, False) for i in range(m)],
                              [rng.randint(2, 30) for _ in range(m)]))
        prepared = Prepared(works, lambda out: Encoded(out[0], 0))
        timeout = rng.choice([5.0] * 6 + [0.001, 0.01, 0.05])
        try:
            if rng.random() < 0.5:
                held = q.precheck({"tokens": 2 * n}, {"tokens": sum(works[0].costs)})
                time.sleep(rng.random() * 0.002)
                q.prepared(held, 0.001)
            job = q.start(prepared, timeout)
        except ApiError as e:
            answer(j, str(e.status))
            if e.status == 429 and int(e.headers["Retry-After"]) < 1 or e.status not in (422, 429):
                problems.append(("refusal", j, e.status, e.headers))
            return
        try:
            out = q.wait(job, timeout)
        except ApiError as e:
            answer(j, str(e.status))
            # A time-out only for the clients that give up within milliseconds: a request
            # given 5 s that times out was left unanswered.
            if e.status not in (422, 503) or e.status == 503 and timeout >= 1:
                problems.append(("error", j, e.status, e.message))
            return
        except InferenceFailed:
            answer(j, "failed")
            if bad < 0:
                problems.append(("failed without a failing input", j))
            return
        answer(j, "ok")
        if bad >= 0:
            problems.append(("succeeded with a failing input", j))
        for work, rows in zip(works, out):
            if not np.array_equal(rows, [[a, b] for a, b, _ in work.payloads]):
                problems.append(("rows", j))

    def handler(k):
        rng = random.Random(seed * 1000 + k)
        for _ in range(25):
            try:
                one(rng)
            except BaseException as e:  # noqa: BLE001 - reported below
                problems.append(("raised", repr(e)))

    threads = [threading.Thread(target=handler, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert len(outcomes) == 200 and all(len(v) == 1 for v in outcomes.values())
    assert sum(v == ["ok"] for v in outcomes.values()) > 40     # ~100-115 here
    deadline = time.monotonic() + 5
    while q.stats().jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = q.stats()
    assert stats.jobs == 0 and not any(stats.queued.values()) and not any(stats.preparing.values())
    assert stats.worker_alive
    q.stop()


def test_a_time_out_503_says_when_the_queued_work_will_have_drained():
    """A request that times out behind 10,000 queued tokens (5 s at the assumed 2,000 tokens/s)
    is told to come back when they are done, not in 1 s (h_mut1)."""
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 100_000}, workers=1)
    block = q.submit(job(lane, "b", [1]))
    assert lane.entered.acquire(timeout=10)
    other = q.submit(job(lane, "o", [10_000]))
    late = q.submit(job(lane, "late", [5]))
    with pytest.raises(ApiError) as exc:
        q.wait(late, 0.05)
    assert exc.value.status == 503 and exc.value.headers["Retry-After"] == "5"
    q.cancel(other)
    lane.gate.release()
    q.wait(block, 10)
    q.stop()


def test_a_wait_interrupted_by_an_exception_cancels_its_job(monkeypatch):
    """Whatever ends a handler's wait (here an exception raised inside it) takes its job out of
    the queue, so its tokens stop counting against everyone else's admission (h_mut1)."""
    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 1000})
    block = q.submit(job(lane, "b", [1]))
    assert lane.entered.acquire(timeout=10)
    late = q.submit(job(lane, "late", [5, 5]))

    def interrupted(timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(late.done, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        q.wait(late, 5)
    assert late.cancelled and q.stats().queued["tokens"] == 0
    lane.gate.release()
    q.wait(block, 10)
    q.stop()
