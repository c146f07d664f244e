"""The helper threads that decode a request's pictures beside its own thread
(``embedding_core/decode_helpers.py``): results in request order, the first bad item in request
order as the error, no picture started after a failure and one under way given up at its
checkpoint, a failure's memory freed at once, a request never waiting for a busy helper, turns
between requests, every helper serving a lone request, nothing of a finished request kept,
threads started lazily (and a thread that cannot start), how many helpers. Real threads; the
jobs sleep or wait on events in place of decoding. Every wait is bounded."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from conftest import refuse_thread_start
from embedding_core import decode_helpers
from embedding_core.decode_helpers import Abandoned, DecodeHelpers
from embedding_core.errors import DeadlinePassed
from embedding_core.settings import Settings

WAIT = 10.0     # seconds: far above any wait here, so a hang fails instead of blocking the run


def bounded_map(helpers, fn, items):
    """``helpers.map`` on another thread, so a lost wakeup fails the test instead of hanging."""
    out: dict = {}

    def run():
        try:
            out["value"] = helpers.map(fn, items)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "map did not return"
    if "error" in out:
        raise out["error"]
    return out["value"]


def is_helper(name: str) -> bool:
    return name.startswith("decode-helper-")


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decode-helper-")]


def test_results_come_back_in_request_order_and_the_helpers_decode_too():
    helpers = DecodeHelpers(2)
    ran_on: dict[int, str] = {}

    def decode(i, item, checkpoint):
        time.sleep(0.02)          # releases the GIL, as Pillow does while it decodes
        ran_on[i] = threading.current_thread().name
        return item * 10
    assert bounded_map(helpers, decode, list(range(12))) == [i * 10 for i in range(12)]
    names = set(ran_on.values())
    assert any(not is_helper(n) for n in names), names      # the request's own thread
    assert any(is_helper(n) for n in names), names


def test_the_error_is_the_first_bad_item_in_request_order_even_when_a_later_one_fails_first():
    helpers = DecodeHelpers(1)
    later_failed = threading.Event()

    def decode(i, item, checkpoint):
        if i == 0:                # fails only once item 1 has failed (on the other thread)
            assert later_failed.wait(WAIT)
            raise ValueError("item 0")
        later_failed.set()
        raise ValueError("item 1")
    with pytest.raises(ValueError, match="item 0"):
        bounded_map(helpers, decode, ["a", "b", "c"])


@pytest.mark.parametrize("bad", [0, 3, 7])
def test_no_item_is_started_after_a_failure(bad):
    helpers = DecodeHelpers(1)
    started = []

    def decode(i, item, checkpoint):
        started.append(i)
        if i == bad:
            raise KeyError(i)
        time.sleep(0.005)
        return i
    with pytest.raises(KeyError):
        bounded_map(helpers, decode, list(range(20)))
    # the two threads each hold at most one item when the failure is recorded
    assert max(started) <= bad + 1, started


def test_a_request_does_not_wait_for_a_busy_helper():
    helpers = DecodeHelpers(1)
    release = threading.Event()
    busy = threading.Event()

    def slow(i, item, checkpoint):
        busy.set()
        assert release.wait(WAIT)
        return item
    other = threading.Thread(target=helpers.map, args=(slow, [1, 2]))
    other.start()
    try:
        assert busy.wait(WAIT)
        threads = []

        def quick(i, item, checkpoint):
            threads.append(threading.current_thread().name)
            return -item
        # both threads of the first request are held: this one decodes on its own thread
        assert bounded_map(helpers, quick, [1, 2, 3]) == [-1, -2, -3]
        assert len(set(threads)) == 1 and not is_helper(threads[0]), threads
    finally:
        release.set()
        other.join(WAIT)
    assert not other.is_alive()


def test_the_helpers_take_turns_between_requests():
    helpers = DecodeHelpers(1)
    log: list[tuple[str, int]] = []
    a_started = threading.Event()

    def decode_for(name):
        def decode(i, item, checkpoint):
            if is_helper(threading.current_thread().name):
                log.append((name, i))
            a_started.set()
            time.sleep(0.03)
            return item
        return decode
    a = threading.Thread(target=helpers.map, args=(decode_for("A"), list(range(10))))
    a.start()
    assert a_started.wait(WAIT)
    assert bounded_map(helpers, decode_for("B"), list(range(10))) == list(range(10))
    a.join(WAIT)
    helper_took = [name for name, _ in log]
    # taken one picture at a time in turn: the helper serves B before it is done with A
    assert "B" in helper_took and "A" in helper_took[helper_took.index("B"):], log


def test_a_finished_request_keeps_nothing_while_a_helper_is_busy():
    helpers = DecodeHelpers(1)
    release, busy = threading.Event(), threading.Event()

    def hold(i, item, checkpoint):
        busy.set()
        assert release.wait(WAIT)
    other = threading.Thread(target=helpers.map, args=(hold, [1, 2]))
    other.start()
    try:
        assert busy.wait(WAIT)

        class Payload:
            pass
        items = [Payload(), Payload()]
        refs = [weakref.ref(p) for p in items]
        result = bounded_map(helpers, lambda i, item, _: [item], items)   # its offer waits in the line
        assert [r[0] for r in result] == items
        del items, result
        gc.collect()
        assert all(r() is None for r in refs)
    finally:
        release.set()
        other.join(WAIT)


def test_threads_start_at_the_first_request_with_several_items_and_none_without_cores():
    before = len(helper_threads())
    helpers = DecodeHelpers(2)
    assert len(helper_threads()) == before
    assert bounded_map(helpers, lambda i, item, _: item + 1, [1]) == [2]
    assert len(helper_threads()) == before
    assert bounded_map(helpers, lambda i, item, _: item + 1, [1, 2]) == [2, 3]
    assert len(helper_threads()) == before + 2
    alone = DecodeHelpers(0)          # one core: the request's thread decodes everything
    names = set()
    assert bounded_map(alone, lambda i, item, _: names.add(threading.current_thread().name) or item,
                     [1, 2, 3]) == [1, 2, 3]
    assert len(names) == 1 and not is_helper(names.pop())
    assert len(helper_threads()) == before + 2


def test_a_picture_under_way_is_given_up_at_its_checkpoint_once_an_earlier_one_fails():
    helpers = DecodeHelpers(1)
    second_claimed, room_given_back = threading.Event(), threading.Event()
    finished = []

    def decode(i, item, checkpoint):
        if i == 0:
            assert second_claimed.wait(WAIT)
            checkpoint.failed()       # as images does, before it gives its decode budget back
            room_given_back.set()
            time.sleep(0.1)           # the failure itself is stored only after this
            raise ValueError("item 0")
        second_claimed.set()
        assert room_given_back.wait(WAIT)
        checkpoint()                  # where a picture has waited for room to decode
        finished.append(i)
        return item
    with pytest.raises(ValueError, match="item 0"):
        bounded_map(helpers, decode, [0, 1])
    assert finished == []


def test_a_checkpoint_gives_up_only_the_items_after_a_failed_one():
    job = decode_helpers._Job(lambda *a: None, [0, 1, 2, 3])
    marks = [decode_helpers._Checkpoint(job, i) for i in range(4)]
    for mark in marks:
        mark()
    marks[2].failed()
    marks[3].failed()                 # a later failure does not move the first
    marks[0](), marks[1](), marks[2]()
    with pytest.raises(Abandoned):
        marks[3]()
    marks[1].failed()
    with pytest.raises(Abandoned):
        marks[2]()
    assert job._claim() is None       # and nothing more is claimed


def test_map_returns_when_a_helper_finishes_last():
    helpers = DecodeHelpers(1)
    helper_busy = threading.Event()

    def decode(i, item, checkpoint):
        if is_helper(threading.current_thread().name):
            helper_busy.set()
            time.sleep(0.2)           # the request's thread is waiting in finish() by then
        else:
            assert helper_busy.wait(WAIT)
        return item
    assert bounded_map(helpers, decode, [0, 1, 2]) == [0, 1, 2]


def test_a_failed_pictures_memory_is_freed_while_the_others_finish():
    """A failure is kept until the request's other pictures are done; the failed picture (its
    frames' locals, as Pillow's buffer) must not be: those others hold the decode budget now."""
    helpers = DecodeHelpers(1)
    failed, started, checked, ref = threading.Event(), threading.Event(), {}, []

    class Picture:
        pass

    def decode(i, item, checkpoint):
        if i == 0:
            assert started.wait(WAIT)
            picture = Picture()       # noqa: F841 - a local of the failing frame
            ref.append(weakref.ref(picture))
            failed.set()
            raise ValueError("bad")
        started.set()
        assert failed.wait(WAIT)
        for _ in range(100):          # the failing thread stores its failure meanwhile
            gc.collect()
            if ref[0]() is None:
                break
            time.sleep(0.01)
        checked["freed"] = ref[0]() is None
        return item
    with pytest.raises(ValueError):
        bounded_map(helpers, decode, [0, 1])
    assert checked.get("freed") is True, checked


def test_every_helper_serves_a_lone_request():
    helpers = DecodeHelpers(3)
    names, all_in = set(), threading.Barrier(4, timeout=WAIT)

    def decode(i, item, checkpoint):
        names.add(threading.current_thread().name)
        if i < 4:
            all_in.wait()             # the first four pictures decode at once, on four threads
        return item
    assert bounded_map(helpers, decode, list(range(8))) == list(range(8))
    assert len(names) == 4, names


def test_a_helper_that_cannot_start_leaves_the_others_and_the_request_thread(monkeypatch):
    refuse_thread_start(monkeypatch, lambda name: name == "decode-helper-1")
    helpers = DecodeHelpers(3)
    before = len(helper_threads())
    for _ in range(3):                # every request is served; no thread started again
        assert bounded_map(helpers, lambda i, item, _: item * 2, [1, 2, 3]) == [2, 4, 6]
    assert helpers.threads == 1 and len(helper_threads()) == before + 1
    refuse_thread_start(monkeypatch, is_helper)
    none = DecodeHelpers(2)
    assert bounded_map(none, lambda i, item, _: item, [1, 2]) == [1, 2] and none.threads == 0


def test_a_helper_outlives_a_failure_outside_the_decoding(monkeypatch):
    helpers = DecodeHelpers(1)
    assert bounded_map(helpers, lambda i, item, _: item, [1, 2]) == [1, 2]
    real_more = decode_helpers._Job.more
    calls = []

    def more(self):
        calls.append(threading.current_thread().name)
        if is_helper(threading.current_thread().name) and len(calls) == 1:
            raise MemoryError
        return real_more(self)
    monkeypatch.setattr(decode_helpers._Job, "more", more)
    items = list(range(6))
    assert bounded_map(helpers, lambda i, item, _: time.sleep(0.01) or item, items) == items
    monkeypatch.setattr(decode_helpers._Job, "more", real_more)
    names = set()

    def decode(i, item, checkpoint):
        names.add(threading.current_thread().name)
        time.sleep(0.02)
        return item
    assert bounded_map(helpers, decode, list(range(8))) == list(range(8))
    assert any(is_helper(n) for n in names), names   # still serving


@pytest.mark.parametrize("env, cores, count", [
    ({}, 1, 0), ({}, 2, 1), ({}, 4, 3),
    ({"EMBEDDINGS_INFERENCE_WORKERS": "1"}, 4, 0), ({"EMBEDDINGS_INFERENCE_WORKERS": "3"}, 8, 2)])
def test_one_helper_fewer_than_the_inference_workers(monkeypatch, env, cores, count):
    from embedding_core import settings as settings_module

    monkeypatch.setattr(settings_module, "usable_cores", lambda: cores)
    assert decode_helpers.helper_count(Settings.from_env(env)) == count
    monkeypatch.setattr(decode_helpers, "_HELPERS", None)
    made = decode_helpers.helpers(Settings.from_env(env))
    assert made.threads == count and decode_helpers.helpers(Settings()) is made


@pytest.mark.parametrize("threads, items", [(0, 3), (2, 1), (2, 3)])
def test_no_picture_starts_once_the_deadline_has_passed(threads, items):
    """Sequential (no helpers, or one picture) or with helpers: once the request's deadline has
    passed, no picture is decoded and the request gets DeadlinePassed (answered as timed out),
    even when the decoder itself never calls its checkpoint."""
    helpers = DecodeHelpers(threads)
    started = []

    def decode(i, item, checkpoint):
        started.append(i)
        return i
    with pytest.raises(DeadlinePassed):
        helpers.map(decode, list(range(items)), deadline=time.perf_counter() - 1)
    assert started == []
