"""An ordered, bounded, parallel map: decode recordings on a few threads while the caller feeds the accelerator.

A sweep with few rows per recording is limited by how fast one thread can decode and resample
audio, not by the model. The expensive parts (libsndfile, numpy, torch resampling) release the
GIL, so a small thread pool runs them side by side. The input iterator is advanced only on the
consumer's thread (a dataset's row reader need not be thread-safe), results come back in input
order (results files and progress stay reproducible), and at most `ahead` results wait at once
(one recording's audio can be hundreds of megabytes).

While a prefetch runs, the interpreter's switch interval is shortened (`ShorterSwitchInterval`): a decode thread
gives up the GIL at each call into C and must take it back after, and beside a thread running Python (the
engine's, the sweep's) each taking-back waits up to the switch interval, 5 ms by default.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Threads for recordings of one answer each, divided among a recording's answers (see default_workers), and
# never more than the cores. A sweep with one answer per recording, 352 FLAC files (10 s, 44.1 kHz), on H100
# machines with 16 host cores (benchmarks/gpu.py sweep_files), answers/s on 8 / 16 threads: 173.8 / 162.6
# (2026-12-06 17:41Z), 167.6 / 182.0 (18:47Z), 167.2 / 183.0 (22:27Z), 165.5 / 197.7 (2026-12-07 03:46Z), 173.5 /
# 173.1 (03:53Z), 185.4 / 216.7 (05:59Z), 201.3 / 230.4 (06:03Z), 145.2 / 201.5 (06:11Z): 16 faster in six of
# eight runs (by 8-39%), equal once, 6% slower once, so 16 is the default (it was 8). Its cost to an Explore
# answer during such a sweep is not measured; a sweep of two or more answers per recording is not affected.
DECODE_THREADS_FOR_ONE_ROW = 16


# The switch interval while any prefetch runs (CPython's default: 5 ms). See ShorterSwitchInterval for the figures.
PREFETCH_SWITCH_INTERVAL_S = 0.0005


def default_workers(rows_per_item: int = 1) -> int:
    """Enough threads to keep one accelerator fed, and no more: each beyond that only takes the GIL.

    `rows_per_item`: the answers each decoded recording feeds (a sweep's alphas x prompts). The more there
    are, the fewer recordings a second the accelerator needs, and decoding threads beyond that only compete
    with the engine's thread for the GIL: 11 answers per recording ran 289.6 answers/s from one thread and
    272.7 from 8 (H100, benchmarks/gpu.py sweep_files, 18:47Z; 295.0 vs 290.9 from 1 and 4 at 16:49Z).
    """
    if rows_per_item < 1:
        raise ValueError(f"rows_per_item must be at least 1, got {rows_per_item}")
    wanted = -(-DECODE_THREADS_FOR_ONE_ROW // rows_per_item)
    return max(1, min(wanted, os.cpu_count() or 1))


@dataclass(frozen=True)
class Prefetched(Generic[Item, Result]):
    """One item and what `function` made of it: a value, or the exception it raised for this item alone.

    The error is handed over rather than raised so that one unreadable recording is skipped by the
    caller while the items after it keep coming.
    """

    item: Item
    value: Result | None
    error: BaseException | None

    def result(self) -> Result:
        """The value, or the item's exception raised here (its traceback still points into `function`)."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class ShorterSwitchInterval:
    """While any prefetch runs, the process's switch interval is at most PREFETCH_SWITCH_INTERVAL_S.

    Why: decoding one 10 s FLAC file lets go of the GIL about 13 times (libsndfile, numpy, the resampler's
    convolution). Beside a thread running Python each taking-back waited up to 5 ms: on this project's 2-core
    machine 8.8 files/s on one decode thread instead of 138 alone; at 0.5 ms, 28.2 (benchmarks/sweep_decoding.py
    --beside-busy-thread). Counted, so overlapping prefetches (two sweeps) share it, and the interval the
    process had is put back when the last one ends, unless someone else changed it meanwhile.
    """

    def __init__(self, seconds: float = PREFETCH_SWITCH_INTERVAL_S) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0.0
        self._set = 0.0

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, self.seconds))
                self._set = sys.getswitchinterval()
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and sys.getswitchinterval() == self._set:
                sys.setswitchinterval(self._saved)


SHORTER_SWITCH_INTERVAL = ShorterSwitchInterval()


def prefetch_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    *,
    workers: int,
    ahead: int,
    one_torch_thread: bool = False,
) -> Iterator[Prefetched[Item, Result]]:
    """`function(item)` for every item, run on `workers` threads, yielded in input order.

    At most `ahead` items are submitted and not yet yielded, so memory stays bounded however slow the
    consumer is. An exception raised by the input iterator itself is raised after the items before it
    have been yielded. Closing the generator (or leaving the loop and dropping it) cancels the items
    not started and joins the threads; use `contextlib.closing` to make that deterministic.
    Bad sizes raise ValueError here, at the call, not at the first item. `one_torch_thread`: see `_pool`.
    """
    if workers < 1:
        raise ValueError(f"prefetch_map needs workers >= 1, got {workers}")
    if ahead < 1:
        raise ValueError(f"prefetch_map needs ahead >= 1, got {ahead}")
    return _prefetch(function, iter(items), workers, ahead, one_torch_thread)


def _pool(workers: int, one_torch_thread: bool) -> ThreadPoolExecutor:
    """The decoding threads; with `one_torch_thread`, each runs torch's CPU operations on one thread.

    Why: a decode thread's resampling convolution otherwise spreads over every core (OpenMP), so 8 decode
    threads start up to 8 x cores threads beside the engine's. On this project's 2-core machine, beside a
    thread running Python, one decode thread read 32.8 / 30.5 files/s with torch's 2 threads and 62.3 / 59.8
    with 1 (benchmarks/sweep_decoding.py --beside-busy-thread with and without --one-torch-thread, two
    alternations; two decode threads, filling both cores, no change beyond noise); the samples are the same
    bits (tests/test_prefetch.py). On an H100 host of 16 cores, a sweep of 352 FLAC files at one alpha ran
    145.2 / 201.5 answers/s with it and 114.4 / 168.3 without, on 8 / 16 decode threads (benchmarks/gpu.py
    --one-alpha-files-only, 2026-12-07 06:11Z, one run each, the same machine). Only for
    sweeps whose model does not compute on this process's CPU (evaluation.sweep.runner): beside a model
    computing on every core, what it does is not measured.

    How: torch fixes a thread's count when the thread first asks for it, from a process-wide value, and
    `set_num_threads` sets both the calling thread's and that value. Each new decode thread asks, then sets
    1; once all have, the caller sets the process-wide value back to its own, which threads starting later
    (an engine's, a web server's) take as before, while the decode threads keep 1.
    """
    if not one_torch_thread:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    import torch  # only here: a prefetch without torch work need not load it

    callers_count = torch.get_num_threads()
    started = threading.Barrier(workers + 1)

    def keep_to_one_torch_thread() -> None:
        torch.get_num_threads()  # this thread's count fixed now, from the process-wide value...
        torch.set_num_threads(1)  # ...and then set to 1, with the process-wide value for a moment
        with suppress(threading.BrokenBarrierError):  # a thread that came late decodes all the same
            started.wait(timeout=60)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch", initializer=keep_to_one_torch_thread)
    for _ in range(workers):  # each submit starts another thread while those before it wait at the barrier
        pool.submit(int)
    with suppress(threading.BrokenBarrierError):
        started.wait(timeout=60)
    torch.set_num_threads(callers_count)
    return pool


def _prefetch(
    function: Callable[[Item], Result], source: Iterator[Item], workers: int, ahead: int, one_torch_thread: bool
) -> Iterator[Prefetched[Item, Result]]:
    pending: deque[tuple[Item, Future[Result]]] = deque()
    exhausted = False
    source_error: BaseException | None = None
    pool = _pool(workers, one_torch_thread)
    with SHORTER_SWITCH_INTERVAL:
        try:
            while True:
                while not exhausted and len(pending) < ahead:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as error:  # raised in order, once the items read before it are out
                        exhausted, source_error = True, error
                        break
                    pending.append((item, pool.submit(function, item)))
                if not pending:
                    if source_error is not None:
                        raise source_error
                    return
                item, future = pending.popleft()
                error = future.exception()
                yield Prefetched(item, None if error is not None else future.result(), error)
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
