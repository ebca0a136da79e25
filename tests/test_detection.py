"""detect(): windows answered in engine batches at each alpha, merged into events, with progress, cancel and
clear refusals; a long 48 kHz recording streamed in bounded memory."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.detection import (
    MAX_DETECTION_ROWS,
    DetectionSettingsError,
    check_detection_settings,
    detect,
    plan_detection,
)
from naturelm_core.engine import Engine, EngineError, GenerationSettings
from tests.detection_helpers import InstantModel, benchmark

PROMPT = "What is the common name for the focal species in the audio?"


class AlphaModel(InstantModel):
    """The instant model, answering "Elk" wherever alpha is under 0.5: an answer that depends on alpha."""

    def __init__(self) -> None:
        super().__init__()
        self.alphas: list[float] = []

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, **kwargs) -> list[str]:
        self.alphas.extend(alphas)
        tones = super().generate_from_embeddings(audio_embeds, prompts, alphas, **kwargs)
        return ["Elk" if alpha < 0.5 else tone for tone, alpha in zip(tones, alphas, strict=True)]


class FailingModel(InstantModel):
    def generate_from_embeddings(self, *args, **kwargs) -> list[str]:
        raise RuntimeError("the GPU caught fire")


@pytest.fixture
def recording(tmp_path):
    """65 s at 44.1 kHz, stereo, with a 1 kHz tone from 20 s to 40 s and silence elsewhere."""
    rate = 44_100
    t = np.arange(65 * rate) / rate
    tone = np.where((t >= 20) & (t < 40), 0.3 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
    path = tmp_path / "tone.flac"
    sf.write(path, np.stack([tone, tone], axis=1), rate)
    return path


@pytest.fixture
def engine_of():
    """An Engine around a model, stopped after the test."""
    engines: list[Engine] = []

    def make(model, **options) -> Engine:
        engines.append(Engine(model, **{"max_batch_rows": 8, **options}).start())
        return engines[-1]

    yield make
    for engine in engines:
        engine.stop()


def _spans(items) -> list[tuple[float, float]]:
    return [(item.start_s, item.end_s) for item in items]


@pytest.mark.parametrize(
    ("hop_s", "event"),
    [(10.0, (20.0, 40.0)), (5.0, (15.0, 45.0))],  # with a 5 s hop, windows half in the tone hear it too
)
def test_events_cover_the_recording_window_by_window_and_merge_equal_answers(engine_of, recording, hop_s, event):
    result = detect(engine_of(InstantModel()), recording, PROMPT, [1.0], 10.0, hop_s)
    starts = np.arange(0.0, 65.0 - 10.0 + hop_s, hop_s)[: 1 + int(np.ceil((65.0 - 10.0) / hop_s))]
    assert _spans(result.windows) == [(s, min(s + 10.0, 65.0)) for s in starts]
    assert result.duration_s == 65.0 and result.complete and result.alphas == ("1",)
    assert [(*_spans([e])[0], e.label, e.alpha) for e in result.events] == [(*event, "Tone.", "1")]
    assert result.events[0].confidence is None


def test_windows_go_to_the_engine_in_batches_not_one_call_per_window(engine_of, recording):
    model = InstantModel()
    result = detect(engine_of(model, max_batch_rows=8, sweep_wait_ms=50), recording, PROMPT, [1.0], 10.0, 1.0)
    assert len(result.windows) == 56
    assert max(model.rows_per_call) == 8
    assert len(model.rows_per_call) <= 10  # 56 rows in batches of 8 is 7 calls; a few may run part-full


def test_every_alpha_is_answered_and_kept_apart(engine_of, recording):
    model = AlphaModel()
    result = detect(engine_of(model), recording, PROMPT, [0.25, 1], 10.0, 10.0)
    assert sorted(model.alphas) == sorted([0.25, 1.0] * 7)
    assert result.alphas == ("0.25", "1")
    assert [(e.start_s, e.end_s, e.alpha, e.label) for e in result.events] == [
        (0.0, 65.0, "0.25", "Elk"),
        (20.0, 40.0, "1", "Tone."),
    ]


def test_alphas_reach_the_engine_unchanged_and_are_stored_as_text(recording):
    """A merge recipe (any object) is handed over as it is; its text is str() of it."""

    class RecordingEngine:
        max_batch_rows = 4
        inline = False

        def __init__(self) -> None:
            self.alphas: list[object] = []

        def new_caller(self) -> int:
            return 1

        def submit_many(self, rows, **_) -> list[Future]:
            futures = []
            for _windows, _prompt, alpha in rows:
                self.alphas.append(alpha)
                futures.append(Future())
                futures[-1].set_result("Tone.")
            return futures

    recipe = {"method": "ties", "density": 0.5}
    engine = RecordingEngine()
    result = detect(engine, recording, PROMPT, [recipe])
    assert engine.alphas == [recipe] * 7 and all(alpha is recipe for alpha in engine.alphas)
    assert result.alphas == (str(recipe),) and result.events[0].alpha == str(recipe)


def test_an_inline_engine_is_driven_from_the_callers_thread(recording):
    engine = Engine(InstantModel(), max_batch_rows=4, inline=True)
    result = detect(engine, recording, PROMPT, [1.0])
    assert [(e.start_s, e.end_s) for e in result.events] == [(20.0, 40.0)]


def test_progress_counts_windows_up_to_the_total(engine_of, recording):
    seen: list[tuple[int, int]] = []
    detect(engine_of(InstantModel()), recording, PROMPT, [1.0], progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_cancel_returns_the_windows_answered_so_far_and_leaves_the_engine_serving(engine_of, recording):
    cancel = threading.Event()
    engine = engine_of(InstantModel(), max_batch_rows=2)

    def progress(done: int, total: int) -> None:
        if done >= 3:
            cancel.set()

    result = detect(engine, recording, PROMPT, [1.0], 10.0, 1.0, progress=progress, cancel=cancel)
    assert not result.complete
    assert 3 <= len(result.windows) < 56
    assert _spans(result.windows)[:3] == [(0.0, 10.0), (1.0, 11.0), (2.0, 12.0)]
    again = detect(engine, recording, PROMPT, [1.0])
    assert again.complete and len(again.windows) == 7


def test_an_engine_failure_is_raised_with_its_message(engine_of, recording):
    with pytest.raises(EngineError, match="the GPU caught fire"):
        detect(engine_of(FailingModel()), recording, PROMPT, [1.0])


@pytest.mark.parametrize(
    ("window_s", "hop_s", "message"),
    [
        (10.0, 0.0, r"the hop is 0 s; it must be between 1 and 10 s \(a hop under 1 s .* a hop of 0 never moves on\)"),
        (12.0, 10.0, r"the window length is 12 s; .* \(a window length over 10 s is more than the model hears"),
        (0.5, 1.0, r"the window length is 0.5 s; it must be between 1 and 10 s"),
        (10.0, 11.0, r"the hop is 11 s; .*leaves audio that no window hears"),
        (float("nan"), 10.0, r"the window length must be a number of seconds"),
        ("10", 10.0, r"the window length must be a number of seconds"),
    ],
)
def test_bad_window_or_hop_values_are_refused_with_what_to_change(window_s, hop_s, message):
    with pytest.raises(DetectionSettingsError, match=message):
        check_detection_settings(window_s, hop_s)


def test_limits_on_duration_and_rows_are_stated():
    assert check_detection_settings(10.0, 10.0, duration_s=7200.0) == 720
    with pytest.raises(DetectionSettingsError, match=r"25.0 h long; detection reads at most 24 h"):
        check_detection_settings(10.0, 10.0, duration_s=25 * 3600.0)
    too_many = rf"86391 windows x 2 alphas is 172782 answers, over the limit of {MAX_DETECTION_ROWS}"
    with pytest.raises(DetectionSettingsError, match=too_many):
        check_detection_settings(10.0, 1.0, duration_s=24 * 3600.0, alphas=2)


def test_plan_detection_reads_only_the_header(recording):
    plan = plan_detection(recording, 10.0, 5.0, alphas=3)
    assert (plan.source, plan.duration_s, plan.windows, plan.rows) == ("tone.flac", 65.0, 12, 36)
    with pytest.raises(DetectionSettingsError, match="over the limit of 20"):
        plan_detection(recording, 10.0, 1.0, alphas=1, max_rows=20)


@pytest.mark.parametrize(
    ("prompt", "alphas", "message"),
    [
        ("  ", [1.0], "the prompt is empty"),
        ("<AudioHere> then <AudioHere>?", [1.0], "2 <AudioHere> placeholders"),
        (PROMPT, 1.0, "alphas must be a list"),
        (PROMPT, [], "no alpha given"),
        (PROMPT, [0.5, 0.50000000001], "alpha 0.5 is listed twice"),
        (PROMPT, [1.5], r"alpha is 1.5; it must lie in \[0, 1\]"),
    ],
)
def test_bad_prompts_and_alphas_are_refused_before_any_audio_is_read(prompt, alphas, message):
    with pytest.raises(ValueError, match=message):
        detect(None, "never-opened.wav", prompt, alphas)


def test_the_tiny_model_answers_every_window(tiny_model, tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(16_000 * 12)).astype(np.float32), 16_000)
    engine = Engine(tiny_model, max_batch_rows=4).start()
    try:
        result = detect(engine, path, PROMPT, [0.0, 1.0], settings=GenerationSettings(num_beams=1, max_new_tokens=3))
    finally:
        engine.stop()
    assert _spans(result.windows) == [(0.0, 10.0), (0.0, 10.0), (10.0, 12.0), (10.0, 12.0)]
    assert all(isinstance(w.answer, str) for w in result.windows)


def test_a_long_48k_recording_streams_in_bounded_memory(tmp_path):
    """20 minutes at 48 kHz (220 MiB as float32) with 8-row batches: the Python and numpy peak stays near
    (16 windows queued + 8 stacked by the engine) x 640 KiB + one source buffer, whatever the length.
    benchmarks/detect_memory.py runs the same over 2 hours."""
    path = benchmark.write_long_recording(tmp_path / "long.flac", 20 * 60, rate=48_000)
    report = benchmark.measure(path, max_batch_rows=8)
    assert report["windows"] == 120
    assert [tuple(e[:2]) for e in report["events"]] == benchmark.expected_events(20 * 60)
    assert report["max_rows_per_call"] == 8 and report["generate_calls"] < 30
    assert report["largest_source_buffer_mib"] < 2.0
    assert report["traced_peak_mib"] < 24 < report["whole_file_float32_mib"] / 8
