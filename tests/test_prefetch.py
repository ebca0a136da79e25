"""prefetch_map: input order kept, memory bounded by `ahead`, errors per item, threads joined when the caller stops."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from evaluation.prefetch import Prefetched, default_workers, prefetch_map


def prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("prefetch")]


class Probe:
    """A function to map that records how many calls run at once and how many have finished."""

    def __init__(self, seconds=lambda item: 0.0, fail_on: frozenset[int] = frozenset()) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.started = 0
        self.finished = 0

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.seconds(item))
            if item in self.fail_on:
                raise ValueError(f"item {item} is unreadable")
            return item * item
        finally:
            with self.lock:
                self.running -= 1
                self.finished += 1


def test_results_come_in_input_order_though_later_items_finish_first():
    probe = Probe(seconds=lambda item: 0.002 * (20 - item))  # the first items are the slowest
    outcomes = list(prefetch_map(probe, range(20), workers=4, ahead=8))
    assert [outcome.item for outcome in outcomes] == list(range(20))
    assert [outcome.result() for outcome in outcomes] == [item * item for item in range(20)]
    assert all(outcome.error is None for outcome in outcomes)
    assert probe.most_running > 1  # they did run side by side
    assert prefetch_threads() == []


@pytest.mark.parametrize(("workers", "ahead"), [(1, 1), (2, 3), (4, 8)])
def test_at_most_ahead_items_are_read_and_not_yet_handed_over_however_slow_the_consumer(workers, ahead):
    probe = Probe()
    read = 0

    def source():
        nonlocal read
        for item in range(30):
            read += 1
            yield item

    waiting_counts = []
    finished_waiting = []
    for handed_over, outcome in enumerate(prefetch_map(probe, source(), workers=workers, ahead=ahead)):
        waiting_counts.append(read - handed_over)  # read from the input and not handed over before this one
        time.sleep(0.003)  # a slow consumer: unbounded workers would race through the whole input meanwhile
        with probe.lock:
            finished_waiting.append(probe.finished - handed_over - 1)
        assert outcome.result() == outcome.item**2
    assert max(waiting_counts) == ahead  # it reads ahead exactly as far as allowed...
    assert max(finished_waiting) <= ahead  # ...and no further results pile up
    assert probe.most_running <= workers


def test_an_item_that_fails_carries_its_own_error_and_later_items_still_come():
    probe = Probe(fail_on=frozenset({3, 7}))
    outcomes = list(prefetch_map(probe, range(10), workers=2, ahead=4))
    assert [outcome.item for outcome in outcomes] == list(range(10))
    failed = {outcome.item: outcome for outcome in outcomes if outcome.error is not None}
    assert set(failed) == {3, 7}
    for item, outcome in failed.items():
        assert isinstance(outcome.error, ValueError) and str(outcome.error) == f"item {item} is unreadable"
        assert outcome.value is None
        with pytest.raises(ValueError, match=f"item {item} is unreadable"):
            outcome.result()
    assert [outcome.result() for outcome in outcomes if outcome.item not in failed] == [
        item * item for item in range(10) if item not in failed
    ]


def test_an_error_reading_the_input_is_raised_after_the_items_read_before_it():
    def source():
        yield from range(5)
        raise OSError("the parquet file vanished")

    received = []
    with pytest.raises(OSError, match="vanished"):
        for outcome in prefetch_map(Probe(), source(), workers=2, ahead=3):
            received.append(outcome.result())
    assert received == [0, 1, 4, 9, 16]
    assert prefetch_threads() == []


def test_closing_early_stops_submitting_and_joins_the_threads():
    probe = Probe(seconds=lambda item: 0.02)
    read = 0

    def source():
        nonlocal read
        for item in range(1000):
            read += 1
            yield item

    outcomes = prefetch_map(probe, source(), workers=3, ahead=6)
    first = [next(outcomes).result() for _ in range(2)]
    assert prefetch_threads()  # the pool is working
    outcomes.close()
    assert first == [0, 1]
    assert prefetch_threads() == []  # joined, not merely told to stop
    assert probe.running == 0  # no call still going on behind the caller's back
    assert read <= 2 + 6 and probe.started <= 2 + 6  # nothing submitted after the consumer stopped
    time.sleep(0.05)
    assert probe.started <= 2 + 6


def test_an_exception_in_the_consumer_shuts_the_pool_down():
    probe = Probe(seconds=lambda item: 0.01)
    outcomes = prefetch_map(probe, range(100), workers=2, ahead=4)
    with pytest.raises(RuntimeError, match="consumer broke"), closing(outcomes):
        for outcome in outcomes:
            if outcome.item == 3:
                raise RuntimeError("consumer broke")
    assert prefetch_threads() == []
    assert probe.running == 0 and probe.started <= 4 + 4


def test_workers_overlap_slow_calls():
    """16 calls of 50 ms: one thread needs 0.8 s; four need about a quarter of that."""
    probe = Probe(seconds=lambda item: 0.05)
    started = time.perf_counter()
    assert [outcome.result() for outcome in prefetch_map(probe, range(16), workers=4, ahead=8)][-1] == 225
    elapsed = time.perf_counter() - started
    assert elapsed < 0.6 * 16 * 0.05
    assert probe.most_running == 4


def test_an_empty_input_yields_nothing_and_leaves_no_threads():
    assert list(prefetch_map(Probe(), [], workers=2, ahead=2)) == []
    assert prefetch_threads() == []


@pytest.mark.parametrize(("workers", "ahead"), [(0, 4), (2, 0), (-1, -1)])
def test_bad_sizes_are_refused(workers, ahead):
    with pytest.raises(ValueError, match=r"needs (workers|ahead) >= 1"):
        prefetch_map(Probe(), range(3), workers=workers, ahead=ahead)


def test_the_default_worker_count_is_small_and_positive(monkeypatch):
    import evaluation.prefetch as prefetch

    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 2)
    assert default_workers() == 2
    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 64)
    assert default_workers() == 16
    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 12)
    assert default_workers() == 12
    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: None)
    assert default_workers() == 1


def test_recordings_with_many_answers_each_get_fewer_decoding_threads(monkeypatch):
    import evaluation.prefetch as prefetch

    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 64)
    assert [default_workers(rows) for rows in (1, 2, 3, 11, 16, 40)] == [16, 8, 6, 2, 1, 1]
    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 2)
    assert default_workers(3) == 2  # never more than the cores
    with pytest.raises(ValueError, match="at least 1"):
        default_workers(0)


def test_a_prefetched_value_is_returned_by_result():
    assert Prefetched("a", 1, None).result() == 1
    with pytest.raises(KeyError):
        Prefetched("b", None, KeyError("b")).result()


def test_the_switch_interval_is_short_while_a_prefetch_runs_and_the_processs_own_comes_back_after():
    import sys

    from evaluation.prefetch import PREFETCH_SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    seen = []
    outer = prefetch_map(lambda x: sys.getswitchinterval(), range(3), workers=2, ahead=2)
    seen.append(next(outer).value)
    inner = list(prefetch_map(lambda x: x, range(2), workers=1, ahead=1))  # a second sweep, overlapping
    assert [p.value for p in inner] == [0, 1]
    assert sys.getswitchinterval() == pytest.approx(PREFETCH_SWITCH_INTERVAL_S)  # the first one still runs
    seen.extend(p.value for p in outer)
    assert seen == [pytest.approx(PREFETCH_SWITCH_INTERVAL_S)] * 3
    assert sys.getswitchinterval() == before


def test_a_prefetch_closed_early_or_failing_puts_the_switch_interval_back():
    import sys

    before = sys.getswitchinterval()
    early = prefetch_map(lambda x: x, range(10), workers=2, ahead=2)
    next(early)
    early.close()
    assert sys.getswitchinterval() == before

    def broken_rows():
        yield 1
        raise OSError("the labels file vanished")

    with pytest.raises(OSError):
        list(prefetch_map(lambda x: x, broken_rows(), workers=1, ahead=1))
    assert sys.getswitchinterval() == before


def test_an_interval_someone_else_set_meanwhile_is_left_as_they_set_it():
    import sys

    before = sys.getswitchinterval()
    running = prefetch_map(lambda x: x, range(3), workers=1, ahead=1)
    next(running)
    try:
        sys.setswitchinterval(0.002)
        list(running)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


@pytest.fixture
def two_torch_threads():
    """The process's torch thread count set to 2 (so that one thread is told apart), put back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_decode_threads_asked_to_keep_to_one_torch_thread_do_and_the_callers_count_comes_back(two_torch_threads):
    import torch

    def threads_seen(_item: int) -> int:
        return torch.get_num_threads()

    assert {p.value for p in prefetch_map(threads_seen, range(6), workers=3, ahead=3)} == {2}
    assert {p.value for p in prefetch_map(threads_seen, range(6), workers=3, ahead=3, one_torch_thread=True)} == {1}
    assert torch.get_num_threads() == 2


def test_overlapping_prefetches_ending_on_another_thread_still_give_the_torch_thread_count_back(two_torch_threads):
    import torch

    first = prefetch_map(lambda x: torch.get_num_threads(), range(4), workers=2, ahead=2, one_torch_thread=True)
    assert next(first).value == 1
    second_started, first_closed = threading.Event(), threading.Event()
    seen: list[int] = []

    def another_sweep() -> None:  # starts while the first runs, and ends after it
        running = prefetch_map(lambda x: torch.get_num_threads(), range(4), workers=2, ahead=2, one_torch_thread=True)
        seen.append(next(running).value)
        second_started.set()
        first_closed.wait(10)
        seen.extend(p.value for p in running)

    thread = threading.Thread(target=another_sweep)
    thread.start()
    second_started.wait(10)
    first.close()
    first_closed.set()
    thread.join(10)
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == 2
    new_thread_count: list[int] = []
    probe = threading.Thread(target=lambda: new_thread_count.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    assert new_thread_count == [2]  # the process-wide value too, which threads starting now take


def test_resampling_gives_the_same_bits_on_one_torch_thread_as_on_several(two_torch_threads):
    """Why one torch thread per decode thread is safe: a sweep decoded so hears what Explore hears on several."""
    import numpy as np
    import torch

    from naturelm_core.audio import _resample_to_16k

    samples = (0.3 * np.random.default_rng(3).standard_normal(441_000)).astype(np.float32)
    on_two = _resample_to_16k(samples, 44_100)
    torch.set_num_threads(1)
    assert np.array_equal(_resample_to_16k(samples, 44_100), on_two)
