"""Sweeps decode only the head of each recording file that their model window needs, and hear the same windows.

Today's reference is the whole file decoded and resampled, then cut (`Subset.decode(row)` + `model_window`); a
sweep now decodes `Subset.decode(row, head_s=window_s)`. Frames read are counted through soundfile, so the
evidence that a long file is not read whole does not depend on timing.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from evaluation.datasets import Sample, load_recordings
from evaluation.sweep import SweepSpec, SweepState, load_examples, model_window, plan_sweep, run_sweep
from naturelm_core.audio import head_source_frames, load_audio, windows
from tests.sweep_helpers import ToneBackend

RATE = 44_100
WINDOW = 160_000  # 10 s at 16 kHz


def tone(frequency: float, seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """A tone under a little noise (every filter tap matters), the same in each channel but for the noise."""
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(round(frequency)).normal(0.0, 0.02, (len(t), channels))
    return (0.4 * np.sin(2 * np.pi * frequency * t)[:, None] + noise).astype(np.float32)


def write_folder(folder, files: dict[str, tuple[float, float, int, int]]):
    """name -> (tone Hz, seconds, rate, channels), with the labels.csv `load_recordings` reads (label: the tone)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (frequency, seconds, rate, channels) in files.items():
        sf.write(folder / name, tone(frequency, seconds, rate, channels), rate)
    lines = [f"{name},tone {frequency:.0f}" for name, (frequency, *_) in files.items()]
    (folder / "labels.csv").write_text("file,label\n" + "\n".join(lines) + "\n")
    return folder


MIXED = {
    "a.flac": (600.0, 25.0, 44_100, 2),
    "b.wav": (900.0, 12.0, 48_000, 1),
    "c.ogg": (1200.0, 10.0, 22_050, 2),
    "d.mp3": (1500.0, 30.0, 44_100, 1),
    "e.flac": (1800.0, 4.0, 16_000, 1),
    "f.mp3": (2100.0, 15.0, 22_050, 2),
}


@pytest.mark.parametrize("window_s", [10.0, 3.0])
def test_a_heads_model_window_is_the_whole_files_bit_for_bit(tmp_path, window_s):
    subset = load_recordings(write_folder(tmp_path / "mixed", MIXED), window_s=window_s)
    head_samples = round(window_s * 16_000)
    for row in subset.rows():
        whole, head = subset.decode(row), subset.decode(row, head_s=window_s)
        assert np.array_equal(model_window(head), model_window(whole)), row.file_name
        assert np.array_equal(head.audio, whole.audio[:head_samples]), row.file_name
        assert (head.label, head.window_s, head.sample_rate) == (whole.label, whole.window_s, whole.sample_rate)


def test_unreadable_files_are_skipped_for_the_same_reasons_with_heads(tmp_path):
    folder = write_folder(tmp_path / "garden", {"ok.flac": (500.0, 12.0, RATE, 1), "short.wav": (700.0, 0.2, RATE, 1)})
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (folder / "labels.csv").write_text("file,label\nok.flac,a\nshort.wav,b\nbroken.wav,c\nmissing.wav,d\n")
    subset = load_recordings(folder)
    whole = [sample.id for sample in subset.samples()]
    reasons = subset.skipped
    assert [sample.id for sample in subset.samples(head_s=10.0)] == whole == ["ok.flac"]
    assert subset.skipped == reasons and len(reasons) == 3


def test_a_sweep_reads_the_head_of_a_ten_minute_flac_not_the_whole_file(tmp_path, frames_read):
    files = {"dawn.flac": (1000.0, 600.0, RATE, 1), "wren.flac": (3000.0, 4.0, RATE, 1)}
    spec = SweepSpec.from_dict(
        {"name": "garden", "source": "recordings", "path": str(write_folder(tmp_path / "garden", files))}
        | {"subsets": ["garden"], "prompts": ["common"], "alphas": [1.0], "num_beams": 1, "max_new_tokens": 4}
    )
    status = run_sweep(ToneBackend(), spec, tmp_path / "runs", decode_workers=2)
    assert status.state is SweepState.COMPLETE and status.done == 2
    assert frames_read.frames == head_source_frames(WINDOW, RATE) + 4 * RATE  # of 600 s: 10 s and 17 frames
    assert frames_read.frames < 15 * RATE


def test_in_context_examples_are_read_as_heads_with_the_same_windows(tmp_path, frames_read):
    files = {
        f"{species}{i}.flac": (400.0 + 300 * k + 20 * i, 60.0, RATE, 1)
        for k, species in enumerate("ab")
        for i in range(3)
    }
    folder = write_folder(tmp_path / "garden", files)
    (folder / "labels.csv").write_text("file,label\n" + "\n".join(f"{name},{name[0]}" for name in files) + "\n")
    template = "{audio_examples}\n\nAudio: <Audio><AudioHere></Audio>\nLabel:"
    spec = SweepSpec.from_dict(
        {"name": "garden", "source": "recordings", "path": str(folder), "subsets": ["garden"]}
        | {"prompts": [{"name": "k=1", "template": template, "examples_per_class": 1}], "alphas": [1.0]}
    )
    (plan,) = plan_sweep(spec)
    load_examples(spec, plan)
    assert frames_read.frames == 6 * head_source_frames(WINDOW, RATE)  # of 6 x 60 s
    rows = {row.id: row for row in plan.subset.rows()}
    for example_id, window in plan.examples.windows.items():
        assert np.array_equal(window, model_window(plan.subset.decode(rows[example_id])))


def test_a_parquet_rows_window_is_its_whole_resampling_even_for_a_short_window_at_a_low_rate():
    """The head of an in-memory row follows the same rule as a file's (naturelm_core.audio.head_source_frames).
    The 0.1 s margin it replaces kept 17,640 frames here, under the size where torch's convolution changes its
    summation order, and its window differed from the whole row's in the last bits."""
    audio = np.random.default_rng(3).normal(0.0, 0.3, 20 * 22_050).astype(np.float32)
    sample = Sample("row", "mine", audio, 22_050, "wren", window_s=0.7)
    waveform, _ = load_audio(audio, sample_rate=22_050)
    assert np.array_equal(model_window(sample), windows(waveform, 0.7, 0.7)[0].samples)


@pytest.mark.parametrize("window_s", [10.0, 3.0])
def test_a_decoded_files_window_is_only_cut_and_padded_and_equals_the_checked_path(tmp_path, window_s, monkeypatch):
    """Files decode through naturelm_core.audio (checked, clamped, 16 kHz): model_window does not check them again.
    Rows of audio in memory (parquet) are not model-ready and still go through load_audio."""
    import naturelm_core.audio

    subset = load_recordings(write_folder(tmp_path / "mixed", MIXED), window_s=window_s)
    samples = [subset.decode(row, head_s=window_s) for row in subset.rows()]
    assert all(sample.model_ready for sample in samples)
    checked = [windows(load_audio(s.audio, sample_rate=16_000)[0], window_s, window_s)[0].samples for s in samples]
    reloaded = []
    monkeypatch.setattr(naturelm_core.audio, "load_audio", lambda *a, **k: reloaded.append(a) or load_audio(*a, **k))
    for sample, expected in zip(samples, checked, strict=True):
        window = model_window(sample)
        assert window.dtype == np.float32 and window.shape == (round(window_s * 16_000),)
        assert np.array_equal(window, expected), sample.file_name
    assert reloaded == []
    assert model_window(Sample("row", "mine", samples[0].audio, 16_000, "x", window_s)) is not None
    assert len(reloaded) == 1  # the same audio, not marked model-ready, is checked again
    in_memory = Sample("row", "mine", np.full(16_000, 3.0, dtype=np.float32), 16_000, "wren", window_s=1.0)
    assert not in_memory.model_ready
    assert model_window(in_memory).max() == 1.0  # clamped by load_audio, as a parquet row's audio must be
