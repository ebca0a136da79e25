"""The engine: dynamic batching across requests, each row at its own alpha, and failures as messages."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from naturelm_core.audio import windows
from naturelm_core.engine import BatchShape, Engine, EngineBusy, EngineError, GenerationSettings, Priority

PROMPT = "What is the common name for the focal species in the audio?"
GREEDY = GenerationSettings(num_beams=1, max_new_tokens=6)


def _clip(seed: int, seconds: float = 2.0) -> np.ndarray:
    """A model window (10 s, zero-padded) of noise, as naturelm_core.audio.windows produces."""
    rng = np.random.default_rng(seed)
    noise = (0.3 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
    return windows(noise)[0].samples


class CountingModel:
    """Wraps the tiny model to record each generate call's alphas and to fail on demand."""

    def __init__(self, model, oom_above_rows: int | None = None, fail_with: Exception | None = None) -> None:
        self.model = model
        self.calls: list[list[float]] = []
        self.oom_above_rows = oom_above_rows
        self.fail_with = fail_with
        self.gate = threading.Event()
        self.gate.set()

    def encode_audio(self, windows):
        return self.model.encode_audio(windows)

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, **kwargs):
        self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        if self.oom_above_rows is not None and len(prompts) > self.oom_above_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.calls.append(list(alphas))
        return self.model.generate_from_embeddings(audio_embeds, prompts, alphas, **kwargs)


def test_concurrent_requests_batch_together_and_each_keeps_its_alpha(tiny_model):
    clip = _clip(0)
    alphas = [0.0, 0.3, 0.6, 1.0, 0.45, 0.9]
    expected = [tiny_model.generate([clip], [PROMPT], [a], num_beams=1, max_new_tokens=6)[0] for a in alphas]
    counting = CountingModel(tiny_model)
    engine = Engine(counting, max_batch_rows=16, sweep_wait_ms=200).start()
    try:
        counting.gate.clear()  # hold the worker so every request is queued before the first batch
        futures = [engine.submit([clip], PROMPT, a, settings=GREEDY) for a in alphas]
        counting.gate.set()
        answers = [f.result(timeout=60) for f in futures]
    finally:
        engine.stop()
    assert answers == expected
    assert sum(len(c) for c in counting.calls) == len(alphas)
    assert len(counting.calls) <= 2  # at most the first request alone, then the rest in one batch
    assert engine.stats.windows_encoded == 1  # one recording, encoded once for every alpha


def test_interactive_requests_are_served_before_queued_sweep_work(tiny_model):
    counting = CountingModel(tiny_model)
    engine = Engine(counting, max_batch_rows=1, sweep_wait_ms=0).start()
    clip = _clip(1)
    try:
        counting.gate.clear()
        blocker = engine.submit([clip], PROMPT, 0.5, settings=GREEDY, priority=Priority.SWEEP)
        time.sleep(0.2)  # the worker now holds the blocker
        sweep = [engine.submit([clip], PROMPT, 0.1 * i, settings=GREEDY, priority=Priority.SWEEP) for i in range(3)]
        interactive = engine.submit([clip], PROMPT, 0.95, settings=GREEDY)
        counting.gate.set()
        for f in [blocker, *sweep, interactive]:
            f.result(timeout=60)
    finally:
        engine.stop()
    order = [c[0] for c in counting.calls]
    assert order[:2] == [0.5, 0.95]


def test_full_queue_answers_busy_instead_of_hanging(tiny_model):
    counting = CountingModel(tiny_model)
    engine = Engine(counting, max_batch_rows=1, sweep_wait_ms=0, interactive_capacity=2).start()
    clip = _clip(2)
    try:
        counting.gate.clear()
        held = [engine.submit([clip], PROMPT, 0.5, settings=GREEDY)]
        time.sleep(0.2)
        held += [engine.submit([clip], PROMPT, 0.5, settings=GREEDY) for _ in range(2)]
        with pytest.raises(EngineBusy, match="busy"):
            engine.submit([clip], PROMPT, 0.5, settings=GREEDY)
        counting.gate.set()
        assert len({f.result(timeout=60) for f in held}) == 1
    finally:
        engine.stop()


def test_out_of_memory_halves_the_batch_and_still_answers_every_row(tiny_model):
    clip = _clip(3)
    alphas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    expected = [tiny_model.generate([clip], [PROMPT], [a], num_beams=1, max_new_tokens=6)[0] for a in alphas]
    counting = CountingModel(tiny_model, oom_above_rows=2)
    engine = Engine(counting, max_batch_rows=8, sweep_wait_ms=200)
    try:
        answers = engine.answer_many([([clip], PROMPT, a) for a in alphas], settings=GREEDY)
    finally:
        engine.stop()
    assert answers == expected
    assert engine.stats.oom_retries >= 1
    assert max(len(c) for c in counting.calls) <= 2


def test_after_running_out_of_memory_later_batches_start_at_the_size_that_fitted(tiny_model):
    """Otherwise every batch would run out of memory first, and drop the model's cached states each time."""
    clip = _clip(3)
    counting = CountingModel(tiny_model, oom_above_rows=2)
    released = []
    counting.release_cached_states = lambda: released.append(True)
    engine = Engine(counting, max_batch_rows=8, sweep_wait_ms=200)
    rows = [([clip], PROMPT, a) for a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    shape = BatchShape(num_beams=1, max_new_tokens=6, windows_per_row=1)
    try:
        engine.answer_many(rows, settings=GREEDY)
        retries, releases = engine.stats.oom_retries, len(released)
        assert engine.batch_limits.rows_for(shape) <= 2 and retries >= 1 and releases == retries
        engine.answer_many(rows, settings=GREEDY)
    finally:
        engine.stop()
    assert (engine.stats.oom_retries, len(released)) == (retries, releases)
    assert engine.max_batch_rows == 8  # the configured size is not what out-of-memory errors change


def test_model_failure_reaches_the_caller_as_a_message_and_the_engine_keeps_serving(tiny_model):
    counting = CountingModel(tiny_model, fail_with=RuntimeError("device-side assert"))
    engine = Engine(counting, sweep_wait_ms=0)
    clip = _clip(4)
    try:
        with pytest.raises(EngineError, match="device-side assert"):
            engine.answer([clip], PROMPT, 0.5, settings=GREEDY)
        counting.fail_with = None
        assert isinstance(engine.answer([clip], PROMPT, 0.5, settings=GREEDY), str)
    finally:
        engine.stop()


def test_bad_alpha_and_settings_fail_at_submit(tiny_model):
    engine = Engine(tiny_model)
    try:
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            engine.submit([_clip(5)], PROMPT, 7.0)
        with pytest.raises(ValueError, match="num_beams"):
            GenerationSettings(num_beams=0)
    finally:
        engine.stop()


def test_bad_windows_fail_at_submit_and_nothing_of_the_call_is_queued(tiny_model):
    engine = Engine(tiny_model, inline=True)
    good = _clip(5)
    for bad, message in (
        (np.zeros((2, 160_000), dtype=np.float32), "1-D"),
        (np.zeros(0, dtype=np.float32), "non-empty"),
        (np.where(np.arange(160_000) == 7, np.nan, good), "NaN or infinite"),
        ((good * 32767).astype(np.int16), "float samples in \\[-1, 1\\], got int16"),
    ):
        with pytest.raises(ValueError, match=message):
            engine.answer_many([([good], PROMPT, 0.5), ([bad], PROMPT, 0.5)], settings=GREEDY)
    assert engine.stats.requests == 0


def test_an_array_beyond_full_scale_is_answered_as_its_clamped_self(tiny_model):
    """Files are clamped to [-1, 1] as they decode; an array handed to the engine gets the same treatment,
    so the same samples give the same answer whichever way they came in (and the embedding cache agrees)."""
    loud = 4.0 * _clip(8)
    assert np.abs(loud).max() > 1.0
    engine = Engine(tiny_model, inline=True)
    answers = engine.answer_many([([loud], PROMPT, 0.7), ([np.clip(loud, -1.0, 1.0)], PROMPT, 0.7)], settings=GREEDY)
    assert answers[0] == answers[1] == tiny_model.generate([loud], [PROMPT], [0.7], num_beams=1, max_new_tokens=6)[0]
    assert engine.stats.windows_encoded == 1  # the clamped array and the loud one are one window to the cache


def test_rows_sharing_one_array_have_it_checked_once_per_call(tiny_model, monkeypatch):
    import naturelm_core.engine as engine_module

    checked = []
    check = engine_module._checked_window
    monkeypatch.setattr(engine_module, "_checked_window", lambda index, w: checked.append(w) or check(index, w))
    shared, other = _clip(9), _clip(10)
    engine = Engine(tiny_model, inline=True)
    engine.answer_many([([shared], PROMPT, a) for a in (0.0, 0.5, 1.0)] + [([other], PROMPT, 0.5)], settings=GREEDY)
    assert [id(w) for w in checked] == [id(shared), id(other)]


def test_inline_engine_answers_in_the_callers_thread_without_a_worker(tiny_model):
    clip = _clip(6)
    engine = Engine(tiny_model, inline=True)
    answers = engine.answer_many([([clip], PROMPT, a) for a in (0.0, 1.0)], settings=GREEDY)
    assert not any(t.name == "naturelm-engine" for t in threading.enumerate())
    assert answers == [tiny_model.generate([clip], [PROMPT], [a], num_beams=1, max_new_tokens=6)[0] for a in (0, 1)]


def test_a_request_cancelled_by_its_caller_is_skipped_and_the_worker_survives(tiny_model):
    counting = CountingModel(tiny_model)
    engine = Engine(counting, max_batch_rows=1, sweep_wait_ms=0).start()
    clip = _clip(7)
    try:
        counting.gate.clear()
        first = engine.submit([clip], PROMPT, 0.5, settings=GREEDY)
        time.sleep(0.2)
        abandoned = engine.submit([clip], PROMPT, 0.25, settings=GREEDY)
        assert abandoned.cancel()
        counting.gate.set()
        first.result(timeout=60)
        assert isinstance(engine.answer([clip], PROMPT, 0.75, settings=GREEDY), str)
    finally:
        engine.stop()
    assert [c[0] for c in counting.calls] == [0.5, 0.75]


class EchoModel:
    """A model stand-in that answers instantly, to stress the queue's locking rather than generation."""

    def encode_audio(self, windows):
        return torch.zeros(len(windows), 2, 4)

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, **kwargs):
        return [f"{p}@{a}" for p, a in zip(prompts, alphas, strict=True)]


def test_requests_submitted_while_the_worker_regroups_batches_are_all_answered():
    """Mixed settings make the worker set aside incompatible rows while other threads keep submitting."""
    engine = Engine(EchoModel(), max_batch_rows=8, sweep_wait_ms=1, interactive_capacity=10_000).start()
    window = np.zeros(16000, dtype=np.float32)
    settings = [GenerationSettings(num_beams=1), GenerationSettings(num_beams=2)]
    futures: list = []

    def submit_many(thread: int) -> None:
        for i in range(300):
            futures.append((f"t{thread}-{i}", engine.submit([window], f"t{thread}-{i}", 0.5, settings=settings[i % 2])))

    try:
        threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers = {prompt: future.result(timeout=30) for prompt, future in futures}
    finally:
        engine.stop()
    assert len(answers) == 1800
    assert all(answer == f"{prompt}@0.5" for prompt, answer in answers.items())
