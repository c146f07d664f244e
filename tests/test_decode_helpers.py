"""The helper threads that decode a request's pictures beside its own thread
(``embedding_core/decode_helpers.py``): results in request order, the first bad item in request
order as the error, no picture started after a failure, a request never waiting for a busy
helper, turns between requests, nothing of a finished request kept, threads started lazily.
Real threads; the jobs sleep or wait on events in place of decoding. Every wait is bounded."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from embedding_core.decode_helpers import DecodeHelpers

WAIT = 10.0     # seconds: far above any wait here, so a hang fails instead of blocking the run


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decode-helper-")]


def test_results_come_back_in_request_order_and_the_helpers_decode_too():
    helpers = DecodeHelpers(2)
    ran_on: dict[int, str] = {}

    def decode(i, item):
        time.sleep(0.02)          # releases the GIL, as Pillow does while it decodes
        ran_on[i] = threading.current_thread().name
        return item * 10
    assert helpers.map(decode, list(range(12))) == [i * 10 for i in range(12)]
    names = set(ran_on.values())
    assert threading.current_thread().name in names
    assert any(n.startswith("decode-helper-") for n in names), names


def test_the_error_is_the_first_bad_item_in_request_order_even_when_a_later_one_fails_first():
    helpers = DecodeHelpers(1)
    later_failed = threading.Event()

    def decode(i, item):
        if i == 0:                # fails only once item 1 has failed (on the other thread)
            assert later_failed.wait(WAIT)
            raise ValueError("item 0")
        later_failed.set()
        raise ValueError("item 1")
    with pytest.raises(ValueError, match="item 0"):
        helpers.map(decode, ["a", "b", "c"])


@pytest.mark.parametrize("bad", [0, 3, 7])
def test_no_item_is_started_after_a_failure(bad):
    helpers = DecodeHelpers(1)
    started = []

    def decode(i, item):
        started.append(i)
        if i == bad:
            raise KeyError(i)
        time.sleep(0.005)
        return i
    with pytest.raises(KeyError):
        helpers.map(decode, list(range(20)))
    # the two threads each hold at most one item when the failure is recorded
    assert max(started) <= bad + 1, started


def test_a_request_does_not_wait_for_a_busy_helper():
    helpers = DecodeHelpers(1)
    release = threading.Event()
    busy = threading.Event()

    def slow(i, item):
        busy.set()
        assert release.wait(WAIT)
        return item
    other = threading.Thread(target=helpers.map, args=(slow, [1, 2]))
    other.start()
    try:
        assert busy.wait(WAIT)
        threads = []

        def quick(i, item):
            threads.append(threading.current_thread().name)
            return -item
        # both threads of the first request are held: this one decodes on its own thread
        assert helpers.map(quick, [1, 2, 3]) == [-1, -2, -3]
        assert set(threads) == {threading.current_thread().name}
    finally:
        release.set()
        other.join(WAIT)
    assert not other.is_alive()


def test_the_helpers_take_turns_between_requests():
    helpers = DecodeHelpers(1)
    log: list[tuple[str, int]] = []
    a_started = threading.Event()

    def decode_for(name):
        def decode(i, item):
            if threading.current_thread().name.startswith("decode-helper-"):
                log.append((name, i))
            a_started.set()
            time.sleep(0.03)
            return item
        return decode
    a = threading.Thread(target=helpers.map, args=(decode_for("A"), list(range(10))))
    a.start()
    assert a_started.wait(WAIT)
    assert helpers.map(decode_for("B"), list(range(10))) == list(range(10))
    a.join(WAIT)
    helper_took = [name for name, _ in log]
    # taken one picture at a time in turn: the helper serves B before it is done with A
    assert "B" in helper_took and "A" in helper_took[helper_took.index("B"):], log


def test_a_finished_request_keeps_nothing_while_a_helper_is_busy():
    helpers = DecodeHelpers(1)
    release, busy = threading.Event(), threading.Event()

    def hold(i, item):
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
        result = helpers.map(lambda i, item: [item], items)   # its offer waits in the line
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
    assert helpers.map(lambda i, item: item + 1, [1]) == [2]
    assert len(helper_threads()) == before
    assert helpers.map(lambda i, item: item + 1, [1, 2]) == [2, 3]
    assert len(helper_threads()) == before + 2
    alone = DecodeHelpers(0)          # one core: the request's thread decodes everything
    names = set()
    assert alone.map(lambda i, item: names.add(threading.current_thread().name) or item,
                     [1, 2, 3]) == [1, 2, 3]
    assert names == {threading.current_thread().name}
    assert len(helper_threads()) == before + 2
