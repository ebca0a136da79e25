"""The engine's batching contract for every caller: a small batch never shrinks later ones, out-of-memory
errors lower the size of their own batch shape only and recover, and callers share batches fairly."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch

from evaluation.sweep import SweepSpec, run_sweep
from naturelm_core.batch_limits import FIRST_PROBE_AFTER, BatchLimits
from naturelm_core.engine import BatchShape, Engine, GenerationSettings, Priority
from tests.sweep_helpers import spec_dict, write_sweep_data

GREEDY = GenerationSettings(num_beams=1, max_new_tokens=4)
BEAMS = GenerationSettings(num_beams=2, max_new_tokens=4)
WINDOW = np.zeros(16000, dtype=np.float32)


class BatchRecorder:
    """Answers instantly with "prompt@alpha", records every batch, and runs out of memory on demand."""

    def __init__(self, model=None) -> None:
        self.model = model
        self.batches: list[list[str]] = []
        self.oom_above_rows: dict[int, int] = {}  # num_beams -> rows that still fit
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):  # whatever else a sweep asks of the model (its config, tokenizer)
        if self.__dict__.get("model") is None:
            raise AttributeError(name)
        return getattr(self.model, name)

    def encode_audio(self, windows):
        return torch.zeros(len(windows), 2, 4)

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, num_beams=2, **kwargs):
        self.gate.wait()
        limit = self.oom_above_rows.get(num_beams)
        if limit is not None and len(prompts) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(list(prompts))
        return [f"{p}@{a:g}" for p, a in zip(prompts, alphas, strict=True)]

    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def _rows(count: int, prompt: str = "scan") -> list:
    return [([WINDOW], f"{prompt}-{i}", i / max(1, count - 1)) for i in range(count)]


@pytest.fixture
def recorder():
    return BatchRecorder()


@pytest.fixture
def engine(recorder):
    engine = Engine(recorder, max_batch_rows=16, sweep_wait_ms=50).start()
    yield engine
    engine.stop()


def test_after_a_one_row_answer_an_eleven_alpha_scan_is_one_batch(engine, recorder):
    engine.answer([WINDOW], "one", 0.5, settings=GREEDY)
    engine.answer_many(_rows(11), settings=GREEDY)
    assert recorder.sizes() == [1, 11]


def test_after_a_three_row_batch_an_eleven_row_one_is_one_batch(engine, recorder):
    engine.answer_many(_rows(3, "small"), settings=GREEDY)
    engine.answer_many(_rows(11), settings=GREEDY)
    assert recorder.sizes() == [3, 11]


def test_small_batches_log_nothing_about_memory(engine, caplog):
    with caplog.at_level(logging.INFO):
        engine.answer([WINDOW], "one", 0.5, settings=GREEDY)
        engine.answer_many(_rows(11), settings=GREEDY)
    assert not [r for r in caplog.records if "memory" in r.getMessage() or "rows" in r.getMessage()]


def test_out_of_memory_lowers_batches_answers_every_row_and_full_batches_return(engine, recorder, caplog):
    recorder.oom_above_rows[1] = 5
    rows = _rows(16)
    with caplog.at_level(logging.WARNING):
        answers = engine.answer_many(rows, settings=GREEDY)
    assert answers == [f"{prompt}@{alpha:g}" for _, prompt, alpha in rows]
    assert max(recorder.sizes()) <= 5
    assert any("out of GPU memory at 16 rows" in r.getMessage() for r in caplog.records)

    del recorder.oom_above_rows[1]  # memory is free again (another process let go of it)
    for _ in range(12):
        engine.answer_many(rows, settings=GREEDY)
        if recorder.sizes()[-1] == 16:
            break
    assert recorder.sizes()[-1] == 16, recorder.sizes()


def test_out_of_memory_of_one_shape_leaves_other_shapes_at_full_size(engine, recorder):
    recorder.oom_above_rows[2] = 3
    engine.answer_many(_rows(12, "beams"), settings=BEAMS)
    assert engine.batch_limits.rows_for(BatchShape(2, 4, 1)) <= 3
    recorder.batches.clear()
    engine.answer_many(_rows(12, "greedy"), settings=GREEDY)
    assert recorder.sizes() == [12]


def test_a_long_request_does_not_hold_back_a_short_one_for_more_than_a_batch(recorder):
    engine = Engine(recorder, max_batch_rows=8, sweep_wait_ms=0).start()
    try:
        recorder.gate.clear()
        long_request = threading.Thread(target=engine.answer_many, args=(_rows(30, "long"),), daemon=True)
        long_request.start()
        time.sleep(0.3)  # the worker now holds the first 8 windows of the long request
        short = engine.submit([WINDOW], "short", 0.5)
        recorder.gate.set()
        short.result(timeout=10)
        long_request.join(timeout=10)
    finally:
        engine.stop()
    position = next(i for i, batch in enumerate(recorder.batches) if "short" in batch)
    assert position == 1, recorder.batches  # first-come first-served put it behind all 30 windows (batch 4)
    assert sum(recorder.sizes()) == 31


def test_one_callers_rows_keep_their_order_and_interactive_rows_still_go_first(recorder):
    engine = Engine(recorder, max_batch_rows=4, sweep_wait_ms=0).start()
    try:
        recorder.gate.clear()
        sweep = engine.new_caller()
        blocker = engine.submit([WINDOW], "blocker", 0.0, priority=Priority.SWEEP, caller=sweep)
        time.sleep(0.2)
        futures = [engine.submit([WINDOW], f"s{i}", 0.0, priority=Priority.SWEEP, caller=sweep) for i in range(6)]
        interactive = engine.submit([WINDOW], "user", 0.5)
        recorder.gate.set()
        for future in [blocker, *futures, interactive]:
            future.result(timeout=10)
    finally:
        engine.stop()
    flat = [p for batch in recorder.batches for p in batch]
    assert flat.index("user") < flat.index("s0")
    assert [p for p in flat if p.startswith("s")] == [f"s{i}" for i in range(6)]


# -- BatchLimits alone ------------------------------------------------------------------------------


def test_limits_probe_upward_after_batches_that_fitted_and_wait_longer_after_a_failed_probe():
    limits = BatchLimits(max_rows=16)
    assert limits.ran_out_of_memory("s", 16) == 8
    for _ in range(FIRST_PROBE_AFTER - 1):
        limits.fitted("s", 8)
    assert limits.rows_for("s") == 8
    limits.fitted("s", 8)
    assert limits.rows_for("s") == 16  # the probe
    assert limits.ran_out_of_memory("s", 16) == 8  # it failed: the next probe waits twice as long
    for _ in range(2 * FIRST_PROBE_AFTER - 1):
        limits.fitted("s", 8)
    assert limits.rows_for("s") == 8
    limits.fitted("s", 8)
    assert limits.rows_for("s") == 16
    limits.fitted("s", 16)
    assert limits.lowered() == {}


def test_limits_ignore_small_batches_and_never_go_below_one_row():
    limits = BatchLimits(max_rows=8)
    limits.fitted("s", 1)
    assert limits.rows_for("s") == 8
    assert limits.ran_out_of_memory("s", 2) == 1
    assert limits.ran_out_of_memory("s", 1) == 1
    for _ in range(100):
        limits.fitted("s", 0)
    assert limits.rows_for("s") == 1
    with pytest.raises(ValueError, match="at least one row"):
        BatchLimits(0)


# -- a sweep after a short one ------------------------------------------------------------------------


def test_a_sweep_started_after_a_short_one_runs_full_batches(tiny_model, tmp_path):
    data = tmp_path / "data"
    write_sweep_data(data)
    recorder = BatchRecorder(tiny_model)
    engine = Engine(recorder, max_batch_rows=12, sweep_wait_ms=50).start()
    try:
        short = SweepSpec.from_dict(spec_dict(data, name="short", limit=1, prompts=["common"], alphas=[0.5]))
        run_sweep(engine, short, tmp_path / "runs")
        assert recorder.sizes() == [1]
        recorder.batches.clear()
        seen = []
        run_sweep(engine, SweepSpec.from_dict(spec_dict(data)), tmp_path / "runs", on_progress=seen.append)
    finally:
        engine.stop()
    assert seen[-1].max_batch_rows == 12 and seen[-1].rows_per_batch >= 6  # what the Sweeps tab shows
    sizes = recorder.sizes()
    assert sum(sizes) == 72
    assert max(sizes) == 12 and sum(sizes) / len(sizes) >= 6, sizes
    assert engine.stats.sweep_rows_per_batch() >= 6


class PausingModel(BatchRecorder):
    """Pauses a sweep batch midway as the static GPU path does (every few decode steps), once the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.user_waiting = threading.Event()
        self.order: list[str] = []

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, num_beams=2, between_steps=None, **kwargs):
        if between_steps is not None:
            self.order.append("sweep batch starts")
            assert self.user_waiting.wait(timeout=10)
            time.sleep(0.05)  # the request is in the queue
            between_steps()
            self.order.append("sweep batch ends")
        else:
            self.order.append(f"answered {prompts}")
        return super().generate_from_embeddings(audio_embeds, prompts, alphas, num_beams, **kwargs)


def test_a_user_waiting_during_a_sweep_batch_is_answered_inside_it_not_after():
    model = PausingModel()
    engine = Engine(model, max_batch_rows=8, sweep_wait_ms=0).start()
    try:
        # Queued at once: one by one, with no sweep wait, the worker may start on the first row alone.
        sweep = engine.submit_many([([WINDOW], f"s{i}", 0.1) for i in range(4)], priority=Priority.SWEEP)
        time.sleep(0.1)
        user = engine.submit([WINDOW], "user", 0.5)
        model.user_waiting.set()
        assert user.result(timeout=10) == "user@0.5"
        assert [f.result(timeout=10) for f in sweep] == [f"s{i}@0.1" for i in range(4)]
    finally:
        engine.stop()
    assert model.order == ["sweep batch starts", "answered ['user']", "sweep batch ends"]
    assert engine.stats.sweep_pauses == 1


def test_interactive_and_inline_batches_are_never_paused():
    model = PausingModel()
    engine = Engine(model, max_batch_rows=8, sweep_wait_ms=0, inline=True)
    engine.answer_many([([WINDOW], "scan", 0.5)], priority=Priority.SWEEP)
    threaded = Engine(model, max_batch_rows=8)
    try:
        threaded.answer([WINDOW], "one", 0.5)
    finally:
        threaded.stop()
    assert model.order == ["answered ['scan']", "answered ['one']"]


def test_cancel_stops_a_sweep_within_the_batch_in_flight(tiny_model, tmp_path):
    """Rows already queued are withdrawn: only the batch a worker holds when Cancel comes is still written."""
    from evaluation.sweep import SweepFolder, SweepState
    from tests.conftest import PacedModel

    data = tmp_path / "data"
    write_sweep_data(data)
    spec = SweepSpec.from_dict(spec_dict(data))  # 12 recordings x 6 rows
    cancel = threading.Event()
    done_at_cancel: list[int] = []

    def on_progress(status):
        if status.done >= 6 and not cancel.is_set():
            done_at_cancel.append(status.done)
            cancel.set()

    engine = Engine(PacedModel(tiny_model, 0.2), max_batch_rows=6, sweep_wait_ms=0).start()
    try:
        status = run_sweep(engine, spec, tmp_path / "runs", cancel=cancel, on_progress=on_progress)
    finally:
        engine.stop()
    written = SweepFolder(tmp_path / "runs", spec.sweep_id).results.read()
    assert status.state is SweepState.CANCELLED and len(written) == status.done
    assert status.done - done_at_cancel[0] <= 6  # queued: 12 rows more (2 batches), all answered before the fix
    assert engine.stats.rows_generated == len(written)


def test_the_sweeps_tab_shows_rows_per_batch_and_says_when_batches_are_small():
    from evaluation.sweep import SweepState, SweepStatus
    from ui.text import progress_html

    running = SweepStatus("s-1", "s", SweepState.RUNNING, total=100, done=10, rate_per_s=5.0, eta_s=18.0)
    running.rows_per_batch, running.max_batch_rows = 170.4, 176
    assert "170 of at most 176 rows per batch" in progress_html(running)
    assert "small batches" not in progress_html(running)
    running.rows_per_batch = 1.0
    assert "1 of at most 176 rows per batch (small batches" in progress_html(running)


class EncodeGatedModel(BatchRecorder):
    """Records encoder calls (windows per call), and holds the first one until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_calls: list[int] = []
        self.first_encode_started = threading.Event()
        self.release_encoder = threading.Event()

    def encode_audio(self, windows):
        self.encoder_calls.append(len(windows))
        self.first_encode_started.set()
        self.release_encoder.wait(timeout=10)
        return super().encode_audio(windows)


def _distinct_windows(count: int) -> list[np.ndarray]:
    return [np.full(16000, i / count, dtype=np.float32) for i in range(count)]


def test_a_sweep_batch_encodes_in_chunks_and_answers_a_waiting_user_between_them():
    """One window per answer: the batch's 80 windows are encoded 32 at a time, and a user who arrived
    during the first chunk is answered before the second, not after the whole batch."""
    from naturelm_core.engine import ENCODER_CHUNK

    model = EncodeGatedModel()
    engine = Engine(model, max_batch_rows=80, sweep_wait_ms=5000)  # the worker waits for all 80 rows
    caller = engine.new_caller()
    sweep = [
        engine.submit([w], f"s{i}", 0.5, priority=Priority.SWEEP, caller=caller)
        for i, w in enumerate(_distinct_windows(80))
    ]
    try:
        assert model.first_encode_started.wait(timeout=10)
        user = engine.submit([np.full(16000, 2.0, dtype=np.float32)], "user", 0.5)
        model.release_encoder.set()
        assert user.result(timeout=10) == "user@0.5"
        assert [f.result(timeout=10) for f in sweep] == [f"s{i}@0.5" for i in range(80)]
    finally:
        engine.stop()
    assert model.encoder_calls == [ENCODER_CHUNK, 1, ENCODER_CHUNK, 80 - 2 * ENCODER_CHUNK]
    assert model.batches[0] == ["user"]
    assert engine.stats.sweep_pauses == 1


def test_an_interactive_batch_encodes_its_windows_in_one_call():
    model = EncodeGatedModel()
    model.release_encoder.set()
    engine = Engine(model, max_batch_rows=80, sweep_wait_ms=0, inline=True)
    engine.answer_many([([w], "scan", 0.5) for w in _distinct_windows(40)])
    assert model.encoder_calls == [40]


def test_windows_are_hashed_by_the_submitting_thread_once_per_array(monkeypatch):
    """The engine's thread never hashes audio (it would stall the GPU), and the 11 rows of one recording
    hash its window once."""
    import naturelm_core.cache as cache_module

    hashed_by: list[str] = []
    original = cache_module.content_key

    def spy(window, **params):
        hashed_by.append(threading.current_thread().name)
        return original(window, **params)

    monkeypatch.setattr(cache_module, "content_key", spy)
    engine = Engine(BatchRecorder(), max_batch_rows=16, sweep_wait_ms=0)
    window = np.full(16000, 0.25, dtype=np.float32)
    try:
        engine.answer_many([([window], "scan", a / 10) for a in range(11)])
    finally:
        engine.stop()
    assert hashed_by == [threading.current_thread().name]


# -- rows submitted together, and how long a batch waits ----------------------------------------------


def test_rows_submitted_together_are_one_batch_though_interactive_batches_never_wait(recorder, monkeypatch):
    """`answer_many` queues its rows at once: the idle worker, which takes an interactive batch without
    waiting for companions, still finds the whole scan, however slowly the submitting thread goes on
    (here 50 ms after each time it queues; rows queued one by one would be split)."""
    engine = Engine(recorder, max_batch_rows=16, sweep_wait_ms=0).start()
    put = engine._queue.put

    def slow_put(*args, **kwargs):
        put(*args, **kwargs)
        time.sleep(0.05)

    monkeypatch.setattr(engine._queue, "put", slow_put)
    try:
        for round_ in range(3):
            engine.answer_many(_rows(11, f"scan{round_}"), settings=GREEDY)
    finally:
        engine.stop()
    assert recorder.sizes() == [11] * 3


def test_a_lone_interactive_row_does_not_wait_for_companions_but_sweep_rows_do(recorder):
    """A sweep's rows come one by one from its decode threads, so a batch that starts with one waits up to
    `sweep_wait_ms` for more; a user asking alone is answered without that wait."""
    engine = Engine(recorder, max_batch_rows=4, sweep_wait_ms=30_000).start()
    try:
        started = time.monotonic()
        assert engine.answer([WINDOW], "alone", 0.5, settings=GREEDY) == "alone@0.5"
        assert time.monotonic() - started < 10  # far below the 30 s a sweep row may wait
        caller = engine.new_caller()
        sweep = []
        for i in range(4):
            sweep.append(engine.submit([WINDOW], f"s{i}", 0.5, priority=Priority.SWEEP, caller=caller))
            time.sleep(0.05)
        assert [f.result(timeout=10) for f in sweep] == [f"s{i}@0.5" for i in range(4)]
    finally:
        engine.stop()
    assert recorder.sizes() == [1, 4]  # the sweep's four rows, queued 50 ms apart, still met in one batch


def test_a_group_is_queued_whole_or_not_at_all(recorder):
    """A group that does not fit the queue's room, or holds one bad alpha, leaves nothing half-queued."""
    from naturelm_core.requests import EngineBusy

    engine = Engine(recorder, max_batch_rows=16, interactive_capacity=4, inline=True)
    engine.submit_many(_rows(3, "first"), settings=GREEDY)
    with pytest.raises(EngineBusy):
        engine.submit_many(_rows(2, "too many"), settings=GREEDY)
    with pytest.raises(ValueError, match="alpha"):
        engine.submit_many([([WINDOW], "good", 0.5), ([WINDOW], "bad", 99.0)], settings=GREEDY)
    assert engine.answer([WINDOW], "last", 0.5, settings=GREEDY) == "last@0.5"
    assert len(recorder.batches) == 1 and sorted(recorder.batches[0]) == ["first-0", "first-1", "first-2", "last"]


def test_a_group_larger_than_the_queue_enters_it_when_empty(recorder):
    """Else an Explore scan of more rows than the lane holds could never be queued, blocking or not."""
    engine = Engine(recorder, max_batch_rows=16, interactive_capacity=4, inline=True)
    assert engine.answer_many(_rows(6), settings=GREEDY) == [f"scan-{i}@{i / 5:g}" for i in range(6)]
    assert recorder.sizes() == [6]


class MinRowsRecorder(BatchRecorder):
    """Records the rows each batch asked its state to decode at least; `device` is where the engine believes it
    runs."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.min_rows: list[int] = []

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, num_beams=2, min_rows=1, **kwargs):
        self.min_rows.append(min_rows)
        return super().generate_from_embeddings(audio_embeds, prompts, alphas, num_beams, **kwargs)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_sweep_batches_on_a_gpu_share_a_padded_state_and_a_users_batch_does_not(device):
    """On a GPU a sweep's odd-sized batches ask for SWEEP_MIN_ROWS rows (one static state, one graph capture, for
    every small size), inline or threaded; a user's answer decodes its own rows only (Explore's one row keeps its
    one-row kernels). On a CPU nothing is padded: no graphs to save, and padding rows cost compute."""
    from naturelm_core.engine import SWEEP_MIN_ROWS

    model = MinRowsRecorder(device)
    Engine(model, max_batch_rows=8, inline=True).answer_many([([WINDOW], "sweep", 0.5)], priority=Priority.SWEEP)
    threaded = Engine(model, max_batch_rows=8)
    try:
        threaded.answer([WINDOW], "user", 0.5)
        threaded.answer_many([([WINDOW], f"s{i}", 0.5) for i in range(3)], priority=Priority.SWEEP)
    finally:
        threaded.stop()
    sweep = SWEEP_MIN_ROWS if device == "cuda" else 1
    assert model.min_rows == [sweep, 1, sweep]
    assert SWEEP_MIN_ROWS > 1
