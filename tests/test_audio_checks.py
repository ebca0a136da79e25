"""What a researcher must be told about a recording before trusting an answer: silence, near-silence,
truncation and corruption, each with a message naming what was found (load_recording, the app's path)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.audio import (
    QUIET_PEAK_DBFS,
    CorruptAudioError,
    SilentAudioError,
    load_audio,
    load_recording,
)

RATE = 16000


def _noise(seconds: float, level: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (level * rng.standard_normal(int(RATE * seconds))).clip(-1, 1).astype(np.float32)


def _wav(path, audio, subtype="PCM_16"):
    sf.write(path, audio, RATE, subtype=subtype)
    return path


def test_a_clean_recording_has_no_warnings(tmp_path):
    recording = load_recording(_wav(tmp_path / "clean.wav", _noise(3)))
    assert recording.warnings == ()
    assert recording.duration_s == pytest.approx(3.0)


def test_digital_silence_is_refused_by_name(tmp_path):
    with pytest.raises(SilentAudioError, match=r"'zero.wav' is silent \(every sample is zero\)"):
        load_recording(_wav(tmp_path / "zero.wav", np.zeros(RATE * 3, dtype=np.float32)))


def test_sweeps_still_answer_silent_samples(tmp_path):
    """A benchmark answers every sample it has; only the interactive path refuses silence."""
    waveform, duration = load_audio(_wav(tmp_path / "zero.wav", np.zeros(RATE * 3, dtype=np.float32)))
    assert duration == pytest.approx(3.0) and not waveform.any()


def test_a_near_silent_recording_is_answered_with_a_warning(tmp_path):
    level = 10 ** ((QUIET_PEAK_DBFS - 12) / 20) / 4  # peak about -70 dBFS
    recording = load_recording(_wav(tmp_path / "quiet.wav", _noise(2, level), subtype="FLOAT"))
    assert len(recording.warnings) == 1
    assert "nearly silent" in recording.warnings[0] and "dBFS" in recording.warnings[0]


def test_a_wav_whose_header_declares_more_audio_warns_with_the_decoded_duration(tmp_path):
    data = _wav(tmp_path / "full.wav", _noise(12)).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    recording = load_recording(cut)
    assert recording.duration_s == pytest.approx(6.0, abs=0.01)
    assert recording.warnings == (
        "'cut.wav' looks truncated: its header declares 12.00 s but 6.00 s could be decoded; "
        "the answer covers the decoded part only",
    )


def test_a_wav_with_almost_nothing_behind_its_header_is_called_corrupt_not_short(tmp_path):
    data = _wav(tmp_path / "full.wav", _noise(12)).read_bytes()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(data[: 44 + 5000])
    for load in (load_recording, load_audio):
        with pytest.raises(CorruptAudioError, match=r"corrupt or truncated: its header declares 12.00 s.*only 0.16 s"):
            load(broken)


@pytest.mark.parametrize("fraction", [0.33, 0.5, 0.71])
def test_a_truncated_mp3_warns(tmp_path, fraction):
    full = tmp_path / "full.mp3"
    sf.write(full, _noise(8), RATE, format="MP3")
    data = full.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert load_recording(full).warnings == ()
    (warning,) = load_recording(cut).warnings
    assert warning.startswith("'cut.mp3' looks truncated: its last MP3 frame is cut short")


def test_the_shared_mp3s_are_not_called_truncated(shared_dir):
    """Their libsndfile length estimates run 1-6% long (ID3 tags): no false alarms from that."""
    for path in sorted((shared_dir / "audio").glob("*.mp3")):
        assert load_recording(path).warnings == (), path.name


def test_bytes_are_checked_like_files(tmp_path):
    data = _wav(tmp_path / "full.wav", _noise(12)).read_bytes()
    recording = load_recording(data[: len(data) // 2])
    assert recording.warnings[0].startswith("the audio data looks truncated")
    with pytest.raises(SilentAudioError, match="the audio data is silent"):
        load_recording(_wav(tmp_path / "zero.wav", np.zeros(RATE, dtype=np.float32)).read_bytes())
