"""The text lane's choice between its default session and a one-thread session
(onnx_session.SessionPair, used with one inference worker on several cores): when it switches,
and that the vectors do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_core.encodings import encode
from embedding_core.onnx_session import SessionPair
from embedding_core.settings import Settings, usable_cores

several_cores = pytest.mark.skipif(usable_cores() < 2, reason="one core: one-thread sessions only")
ONE_WORKER = {"EMBEDDINGS_INFERENCE_WORKERS": "1"}


def pair(narrow=True) -> SessionPair:
    return SessionPair(lambda: "wide", (lambda: "narrow") if narrow else None)


def test_many_small_batches_of_several_requests_move_to_one_thread():
    p = pair()
    picks = [p.pick(120, 4) for _ in range(12)]
    assert picks[0] == "wide"                    # it follows the traffic, not one batch
    assert picks[-1] == "narrow" and picks[-4:] == ["narrow"] * 4


def test_a_lone_small_batch_among_them_stays_on_one_thread():
    p = pair()
    for _ in range(12):
        p.pick(120, 4)
    assert p.pick(40, 1) == "narrow"             # else the other threads' spinning costs the gain


def test_a_big_batch_switches_back_at_once():
    p = pair()
    for _ in range(12):
        p.pick(120, 4)
    assert p.pick(800, 2) == "wide"
    assert p.pick(120, 4) == "wide"              # and the averages start again from it


def test_one_request_at_a_time_keeps_every_core():
    p = pair()
    assert {p.pick(60, 1) for _ in range(50)} == {"wide"}


def test_batched_requests_keep_every_core():
    p = pair()
    assert {p.pick(32 * 25, 2) for _ in range(50)} == {"wide"}


def test_switched_off_or_single_threaded_it_never_creates_a_second_session():
    p = pair(narrow=False)
    assert {p.pick(120, 4) for _ in range(50)} == {"wide"}


def test_the_one_thread_session_is_made_once_on_first_use():
    made = []
    p = SessionPair(lambda: "wide", lambda: made.append(1) or f"narrow{len(made)}")
    for _ in range(30):
        p.pick(120, 4)
    assert made == [1]


def test_the_default_session_is_made_once_by_concurrent_first_picks():
    """Two inference workers may run their first batches at the same moment."""
    import threading
    import time
    made = []

    def make_wide():
        made.append(1)
        time.sleep(0.05)
        return f"wide{len(made)}"
    p = SessionPair(make_wide, None)
    start = threading.Barrier(4)
    got = []

    def first_pick():
        start.wait()
        got.append(p.pick(60, 1))
    threads = [threading.Thread(target=first_pick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert made == [1] and got == ["wide1"] * 4


@several_cores
def test_text_backend_settings(registry):
    from embedding_core.text import TextBackend

    dep = registry.find("all-MiniLM-L6-v2")
    # One worker per core (the default): every session has one thread already.
    assert TextBackend(dep, Settings.from_env({}), registry).sessions._make_narrow is None
    assert TextBackend(dep, Settings.from_env(ONE_WORKER),
                       registry).sessions._make_narrow is not None
    assert TextBackend(dep, Settings.from_env({**ONE_WORKER,
                                               "EMBEDDINGS_ORT_SMALL_BATCH_THREAD": "off"}),
                       registry).sessions._make_narrow is None
    assert TextBackend(dep, Settings.from_env({**ONE_WORKER,
                                               "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}),
                       registry).sessions._make_narrow is None


@several_cores
def test_one_worker_picks_its_session_once_per_batch_on_the_whole_batch(registry):
    """With one worker on several cores, the session follows the batch (its padded tokens over
    all its length groups), not each run: batches of 32 short inputs from several requests stay
    on the session with every core. The cap on a run's tokens grows with the session's threads."""
    from embedding_core.text import MAX_RUN_TOKENS, TextBackend, length_groups

    settings = Settings.from_env(ONE_WORKER)
    backend = TextBackend(registry.find("all-MiniLM-L6-v2"), settings, registry)
    assert backend.max_run_tokens == MAX_RUN_TOKENS * settings.session_threads
    one_thread_env = {**ONE_WORKER, "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}
    one_thread = TextBackend(registry.find("all-MiniLM-L6-v2"), Settings.from_env(one_thread_env),
                             registry)
    assert one_thread.max_run_tokens == MAX_RUN_TOKENS

    picks, real_pick = [], backend.sessions.pick

    def pick(tokens, requests):
        session = real_pick(tokens, requests)
        picks.append((tokens, session))
        return session
    backend.sessions.pick = pick
    ids = backend.tokenize([f"sentence number {i} about rivers, trains, harbours, the sea and"
                            " the long roads between the towns along the coast"
                            for i in range(32)], truncate="END")
    lengths = sorted(len(x) for x in ids)
    groups = length_groups(lengths, backend.max_run_tokens)
    padded = sum((hi - lo) * lengths[hi - 1] for lo, hi in groups)
    for _ in range(12):
        backend.run(ids, requests=4)
    assert [t for t, _ in picks] == [padded] * 12 and padded >= backend.sessions.BIG_TOKENS
    assert all(session is backend.sessions.wide for _, session in picks)


@several_cores
@pytest.mark.parametrize("deployment", ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-exact"])
def test_vectors_are_the_same_on_either_session(registry, reference, deployment):
    """The 25 reference texts in batches of 1, 4 and 25 on a session with every core and on a
    one-thread session: float within 1e-5, int8 and binary codes identical."""
    from embedding_core.text import TextBackend

    backend = TextBackend(registry.find(deployment), Settings.from_env(ONE_WORKER), registry)
    ranges = registry.calibration(backend.deployment).get(384)
    ids = backend.tokenize(reference["texts"], truncate="END")
    narrow = backend.sessions._make_narrow()
    wide = backend.sessions.wide
    try:
        for size in (1, 4, 25):
            got = {}
            for name, session in (("wide", wide), ("narrow", narrow)):
                backend.sessions.pick = lambda tokens, requests, s=session: s
                got[name] = np.concatenate([backend.run(ids[i:i + size])
                                            for i in range(0, len(ids), size)])
            assert np.abs(got["wide"] - got["narrow"]).max() <= 1e-5, size
            for fmt in ("int8", "binary"):
                assert np.array_equal(np.asarray(encode(got["wide"], fmt, ranges)),
                                      np.asarray(encode(got["narrow"], fmt, ranges))), (size, fmt)
    finally:
        del backend.sessions.pick


def test_a_batch_of_exactly_big_tokens_switches_back_at_once():
    """"A batch of BIG_TOKENS or more switches back at once": BIG_TOKENS itself included."""
    p = SessionPair(lambda: "wide", lambda: "narrow")
    for _ in range(12):
        p.pick(120, 4)
    assert p.pick(120, 4) == "narrow"
    assert p.pick(SessionPair.BIG_TOKENS, 2) == "wide"
    assert p.pick(120, 4) == "wide"


@pytest.mark.parametrize("env, spin, threads, expected", [
    # (intra-op threads, inter-op threads, CPU arena, optimisation level, spinning)
    ({"EMBEDDINGS_ORT_INTRA_OP_THREADS": "3"}, True, None, (3, 1, True, "ORT_ENABLE_ALL", "1")),
    ({"EMBEDDINGS_ORT_INTRA_OP_THREADS": "3"}, True, 1, (1, 1, True, "ORT_ENABLE_ALL", "1")),
    ({"EMBEDDINGS_ORT_INTER_OP_THREADS": "2", "EMBEDDINGS_ORT_CPU_MEM_ARENA": "false",
      "EMBEDDINGS_ORT_OPTIMIZATION_LEVEL": "basic", "EMBEDDINGS_ORT_INTRA_OP_THREADS": "2"},
     True, None, (2, 2, False, "ORT_ENABLE_BASIC", "1")),
    ({"EMBEDDINGS_ORT_SPINNING": "false", "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}, True, None,
     (1, 1, True, "ORT_ENABLE_ALL", "0")),
    ({"EMBEDDINGS_ORT_SPINNING": "true", "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}, False, None,
     (1, 1, True, "ORT_ENABLE_ALL", "1")),
    ({"EMBEDDINGS_ORT_INTRA_OP_THREADS": "1"}, False, None, (1, 1, True, "ORT_ENABLE_ALL", "0")),
])
def test_sessions_are_made_with_the_settings_ort_options(env, spin, threads, expected):
    """What each EMBEDDINGS_ORT_* setting (and a session's own thread count, as the one-thread
    session asks) becomes in the ONNX Runtime session actually created."""
    import onnxruntime as ort

    from conftest import ROOT
    from embedding_core.onnx_session import create_session

    session = create_session(ROOT / "embedding_core/models/all-MiniLM-L6-v2/model.onnx",
                             Settings.from_env(env), spin=spin, threads=threads)
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_cpu_mem_arena,
            opts.graph_optimization_level,
            opts.get_session_config_entry("session.intra_op.allow_spinning")) == (
        *expected[:3], getattr(ort.GraphOptimizationLevel, expected[3]), expected[4])
