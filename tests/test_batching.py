"""Micro-batch planning and the concurrency bound."""

import threading

import numpy as np
import pytest

from embedding_core.batching import ConcurrencyLimiter, plan_batches
from embedding_core.errors import ApiError


def test_batches_are_length_sorted_within_budget_and_cover_every_input():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 257, size=500).tolist()
    batches = plan_batches(lengths, token_budget=2048, max_batch_size=32)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 32
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2048
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima == sorted(maxima)


def test_an_input_longer_than_the_budget_runs_alone():
    batches = plan_batches([10, 300, 12], token_budget=256, max_batch_size=8)
    assert [sorted(b.tolist()) for b in batches] == [[0, 2], [1]]


def test_limiter_refuses_beyond_the_queue_with_retry_after():
    limiter = ConcurrencyLimiter(max_active=1, max_waiting=0, timeout_s=5, retry_after_s=3)
    with limiter.slot():
        with pytest.raises(ApiError) as exc:
            with limiter.slot():
                pass
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "3"
    with limiter.slot() as waited:  # free again
        assert waited < 1


def test_limiter_queues_up_to_the_limit_then_times_out():
    limiter = ConcurrencyLimiter(max_active=1, max_waiting=1, timeout_s=0.2, retry_after_s=1)
    release = threading.Event()
    holding = threading.Event()

    def hold():
        with limiter.slot():
            holding.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    with pytest.raises(ApiError) as exc:  # waits 0.2 s in the queue, then 429
        with limiter.slot():
            pass
    assert exc.value.status == 429
    release.set()
    t.join(5)
    with limiter.slot():
        pass
