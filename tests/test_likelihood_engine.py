"""Label scoring through the engine: the model's numbers, in batches of their own, under the same priorities and
out-of-memory back-off as generation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from naturelm_core.engine import LABELS, BatchShape, Engine, EngineError, GenerationSettings, Priority
from naturelm_core.label_scores import Candidates, LabelError

PROMPT = "What is the common name for the focal species in the audio?"
LABEL_SET = ["Humpback", "Humpback Whale", "American Robin", "Killer Whale", "none", "Wren"]
GREEDY = GenerationSettings(num_beams=1, max_new_tokens=4)


def _clip(seed: int) -> np.ndarray:
    """One 10 s model window of noise inside [-1, 1], so the model's clamp and the engine agree on it."""
    return np.random.default_rng(seed).uniform(-0.3, 0.3, 160_000).astype(np.float32)


class ScoringStub:
    """The tiny model, recording each batch (its kind, alphas and pass size), held on a gate, and running out
    of memory above `oom_above_rows` rows or `oom_above_per_pass` candidates per pass."""

    def __init__(self, model, oom_above_rows: int | None = None, oom_above_per_pass: int | None = None) -> None:
        self.model = model
        self.oom_above_rows = oom_above_rows
        self.oom_above_per_pass = oom_above_per_pass
        self.batches: list[tuple] = []
        self.out_of_memory: list[bool] = []  # per scoring attempt
        self.on_first_pass = None
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):  # check_grid_point, label_candidates: the model's own
        return getattr(self.__dict__["model"], name)

    def encode_audio(self, windows):
        return self.model.encode_audio(windows)

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, **kwargs):
        self.gate.wait()
        self.batches.append(("generate", list(alphas)))
        return self.model.generate_from_embeddings(audio_embeds, prompts, alphas, **kwargs)

    def score_labels_from_embeddings(self, audio_embeds, prompts, labels, alphas, **kwargs):
        self.gate.wait()
        per_pass = min(kwargs["max_candidates_per_pass"], sum(len(c) for c in labels))
        too_many_rows = self.oom_above_rows is not None and len(prompts) > self.oom_above_rows
        too_many_candidates = self.oom_above_per_pass is not None and per_pass > self.oom_above_per_pass
        self.out_of_memory.append(too_many_rows or too_many_candidates)
        if self.out_of_memory[-1]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        between = kwargs.get("between_passes")
        if self.on_first_pass is not None and between is not None:
            first, self.on_first_pass = self.on_first_pass, None

            def between_passes() -> None:
                nonlocal first
                if first is not None:
                    first, call = None, first
                    call()
                between()

            kwargs["between_passes"] = between_passes
        self.batches.append(("labels", list(alphas), per_pass))
        scores = self.model.score_labels_from_embeddings(audio_embeds, prompts, labels, alphas, **kwargs)
        self.batches.append(("labels done", list(alphas)))
        return scores


def expected(model, clip, alphas) -> list[dict[str, float]]:
    return [model.score_labels([clip], PROMPT, LABEL_SET, [a])[0].log_likelihoods for a in alphas]


def assert_scores(got, want) -> None:
    assert len(got) == len(want)
    for scores, log_likelihoods in zip(got, want, strict=True):
        assert list(scores.log_likelihoods) == LABEL_SET
        assert scores.log_likelihoods == pytest.approx(log_likelihoods, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("inline", [True, False])
def test_the_engine_scores_as_the_model_does(tiny_model, inline):
    clip = _clip(10)
    alphas = [0.0, 0.4, {"alpha": 0.8, "layers": "linear:0.2:1"}, 1.0]
    engine = Engine(tiny_model, max_batch_rows=8, sweep_wait_ms=100, inline=inline, max_candidates_per_pass=5)
    try:
        scores = engine.score_labels([([clip], PROMPT, a) for a in alphas], LABEL_SET)
    finally:
        engine.stop()
    assert_scores(scores, expected(tiny_model, clip, alphas))
    assert (engine.stats.rows_scored, engine.stats.candidates_scored) == (4, 4 * len(LABEL_SET))
    assert engine.stats.windows_encoded == 1


def test_scoring_and_generation_rows_never_share_a_batch(tiny_model):
    stub = ScoringStub(tiny_model)
    clip = _clip(11)
    engine = Engine(stub, max_batch_rows=16, sweep_wait_ms=100).start()
    try:
        stub.gate.clear()
        blocker = engine.submit([clip], PROMPT, 0.25, settings=GREEDY)
        time.sleep(0.2)  # the worker now holds the blocker: everything below is queued before the next batch
        futures = []
        for alpha in (0.0, 0.5, 1.0):
            futures.append(("labels", alpha, engine.submit_labels([clip], PROMPT, LABEL_SET, alpha)))
            futures.append(("generate", alpha, engine.submit([clip], PROMPT, alpha, settings=GREEDY)))
        stub.gate.set()
        results = [(kind, alpha, future.result(timeout=60)) for kind, alpha, future in futures]
        blocker.result(timeout=60)
    finally:
        engine.stop()
    kinds = [batch[0] for batch in stub.batches[1:] if batch[0] != "labels done"]
    assert sorted(kinds) == ["generate", "labels"]  # one batch of each, whatever the order of arrival
    for kind, alpha, result in results:
        if kind == "labels":
            assert_scores([result], expected(tiny_model, clip, [alpha]))
        else:
            assert result == tiny_model.generate([clip], PROMPT, [alpha], num_beams=1, max_new_tokens=4)[0]


def test_interactive_scoring_goes_before_queued_sweep_scoring(tiny_model):
    stub = ScoringStub(tiny_model)
    engine = Engine(stub, max_batch_rows=1, sweep_wait_ms=0).start()
    clip = _clip(12)
    try:
        stub.gate.clear()
        blocker = engine.submit_labels([clip], PROMPT, LABEL_SET, 0.5, priority=Priority.SWEEP)
        time.sleep(0.2)  # the worker now holds the blocker
        sweep = [engine.submit_labels([clip], PROMPT, LABEL_SET, 0.1 * i, priority=Priority.SWEEP) for i in range(3)]
        interactive = engine.submit_labels([clip], PROMPT, LABEL_SET, 0.95)
        stub.gate.set()
        for future in [blocker, *sweep, interactive]:
            future.result(timeout=60)
    finally:
        engine.stop()
    started = [batch[1][0] for batch in stub.batches if batch[0] == "labels"]
    assert started[:2] == [0.5, 0.95]


def test_a_sweep_scoring_batch_answers_waiting_users_between_its_passes(tiny_model):
    stub = ScoringStub(tiny_model)
    engine = Engine(stub, max_batch_rows=8, sweep_wait_ms=50, max_candidates_per_pass=2).start()
    clip = _clip(13)
    waiting = []
    stub.on_first_pass = lambda: waiting.append(engine.submit([clip], PROMPT, 0.25, settings=GREEDY))
    try:
        scores = engine.score_labels([([clip], PROMPT, a) for a in (0.0, 1.0)], LABEL_SET, priority=Priority.SWEEP)
    finally:
        engine.stop()
    assert [batch[0] for batch in stub.batches] == ["labels", "generate", "labels done"]
    assert waiting[0].result(timeout=1) == tiny_model.generate([clip], PROMPT, [0.25], num_beams=1, max_new_tokens=4)[0]
    assert engine.stats.sweep_pauses == 1
    assert_scores(scores, expected(tiny_model, clip, [0.0, 1.0]))


@pytest.mark.parametrize(("rows_fit", "per_pass_fits"), [(None, 3), (2, None), (2, 3), (1, 1)])
def test_out_of_memory_backs_off_and_still_answers_every_request(tiny_model, rows_fit, per_pass_fits):
    stub = ScoringStub(tiny_model, oom_above_rows=rows_fit, oom_above_per_pass=per_pass_fits)
    released = []
    stub.release_cached_states = lambda: released.append(True)
    clip = _clip(14)
    alphas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    engine = Engine(stub, max_batch_rows=8, sweep_wait_ms=100)
    rows = [([clip], PROMPT, a) for a in alphas]
    try:
        scores = engine.score_labels(rows, LABEL_SET)
        retries = engine.stats.oom_retries
        assert retries >= 1 and len(released) == retries
        attempts = len(stub.out_of_memory)
        again = engine.score_labels(rows, LABEL_SET)
    finally:
        engine.stop()
    assert not stub.out_of_memory[attempts]  # a later batch starts at the sizes that fitted
    want = expected(tiny_model, clip, alphas)
    assert_scores(scores, want)
    assert_scores(again, want)
    ran = [batch for batch in stub.batches if batch[0] == "labels"]
    assert max(len(batch[1]) for batch in ran) <= (rows_fit or 8)
    assert max(batch[2] for batch in ran) <= (per_pass_fits or 8 * len(LABEL_SET))
    shape = BatchShape(0, 0, 1, LABELS)
    assert engine.batch_limits.rows_for(BatchShape(1, 4, 1)) == 8  # generation keeps its full batches
    assert engine.batch_limits.rows_for(shape) <= (rows_fit or 8)


def test_a_row_that_cannot_fit_one_candidate_at_a_time_fails_with_a_message(tiny_model):
    stub = ScoringStub(tiny_model, oom_above_per_pass=0)
    engine = Engine(stub, sweep_wait_ms=0)
    clip = _clip(15)
    try:
        with pytest.raises(EngineError, match="one label at a time"):
            engine.score_labels([([clip], PROMPT, 0.5)], LABEL_SET)
        stub.oom_above_per_pass = None
        assert isinstance(engine.answer([clip], PROMPT, 0.5, settings=GREEDY), str)  # the engine keeps serving
    finally:
        engine.stop()


def test_bad_labels_and_alphas_fail_at_submit(tiny_model):
    engine = Engine(tiny_model)
    clip = _clip(16)
    try:
        with pytest.raises(LabelError, match="listed twice"):
            engine.submit_labels([clip], PROMPT, ["Wren", "Wren"], 0.5)
        with pytest.raises(LabelError, match="no candidate labels"):
            engine.score_labels([([clip], PROMPT, 0.5)], [])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            engine.submit_labels([clip], PROMPT, LABEL_SET, 3.0)
        assert engine.stats.requests == 0
    finally:
        engine.stop()


class CountingLabelSets(ScoringStub):
    """The tiny model, counting how often a label set is tokenized."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.tokenized: list[tuple[str, ...]] = []

    def label_candidates(self, labels):
        if not isinstance(labels, Candidates):  # Engine.submit_labels hands tokenized sets back, returned as they are
            self.tokenized.append(tuple(labels))
        return self.model.label_candidates(labels)


def test_a_label_set_is_tokenized_once_per_engine_however_many_rows_score_against_it(tiny_model):
    from evaluation.sweep.backends import EngineBackend

    counting = CountingLabelSets(tiny_model)
    engine = Engine(counting)
    backend = EngineBackend(engine)
    clip = _clip(9)
    rows = [([clip], PROMPT, alpha) for alpha in (0.0, 0.5, 1.0)]
    try:
        first = [future.result(timeout=120) for future in backend.submit_label_group(rows, LABEL_SET)]
        again = [future.result(timeout=120) for future in backend.submit_label_group(rows[:1], tuple(LABEL_SET))]
        other = engine.label_candidates(LABEL_SET[:2])
    finally:
        engine.stop()
    assert counting.tokenized == [tuple(LABEL_SET), tuple(LABEL_SET[:2])]
    assert engine.label_candidates(list(LABEL_SET)) is engine.label_candidates(tuple(LABEL_SET))
    assert other is not engine.label_candidates(LABEL_SET)
    assert_scores(first, expected(tiny_model, clip, [0.0, 0.5, 1.0]))
    assert_scores(again, expected(tiny_model, clip, [0.0]))
