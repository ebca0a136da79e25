"""Streamed windows: the same windows `windows(load_audio(path))` cuts, in bounded memory, with clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.audio import (
    AudioFileNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    UnsupportedFormatError,
    ffmpeg_available,
    iter_windows,
    load_audio,
    window_count,
    windows,
)
from naturelm_core.audio_stream import RESAMPLE_MARGIN_S, open_windows

# Whole-file and per-window resampling differ only in float summation order (see audio_stream's docstring).
TOLERANCE = 1e-6


def _noise(path, seconds: float, rate: int, channels: int = 1, seed: int = 0, **write_options) -> str:
    rng = np.random.default_rng(seed)
    frames = np.clip(0.4 * rng.standard_normal((round(seconds * rate), channels)), -1, 1).astype(np.float32)
    sf.write(path, frames, rate, **write_options)
    return str(path)


def _assert_same_windows(path: str, window_s: float, hop_s: float) -> None:
    waveform, duration_s = load_audio(path)
    expected = windows(waveform, window_s, hop_s)
    with open_windows(path, window_s, hop_s) as stream:
        got = list(stream)
        assert stream.duration_s == pytest.approx(duration_s, abs=1e-9)
        assert stream.window_count == len(expected)
    assert [(w.start_s, w.end_s) for w in got] == [(w.start_s, w.end_s) for w in expected]
    for streamed, whole in zip(got, expected, strict=True):
        np.testing.assert_allclose(streamed.samples, whole.samples, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("rate", "channels", "seconds"),
    [(48_000, 1, 23.37), (44_100, 2, 21.3), (22_050, 1, 10.0), (8_000, 1, 12.5), (16_000, 2, 20.0)],
)
@pytest.mark.parametrize(("window_s", "hop_s"), [(10.0, 10.0), (3.0, 1.0), (5.0, 7.0)])
def test_streamed_windows_match_whole_file_resampling(tmp_path, rate, channels, seconds, window_s, hop_s):
    path = _noise(tmp_path / "noise.flac", seconds, rate, channels, subtype="PCM_24")
    _assert_same_windows(path, window_s, hop_s)


@pytest.mark.parametrize(("extension", "subtype"), [("wav", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_every_soundfile_format_streams_like_it_decodes(tmp_path, extension, subtype):
    path = _noise(tmp_path / f"noise.{extension}", 21.3, 44_100, 2, subtype=subtype)
    _assert_same_windows(path, 10.0, 5.0)


def test_a_file_ending_exactly_on_a_window_edge_gets_no_empty_window(tmp_path):
    path = _noise(tmp_path / "twenty.wav", 20.0, 16_000)
    with open_windows(path) as stream:
        assert [(w.start_s, w.end_s) for w in stream] == [(0.0, 10.0), (10.0, 20.0)]


def test_a_numpy_waveform_is_cut_like_windows(tmp_path):
    waveform = np.linspace(-0.5, 0.5, 16_000 * 25, dtype=np.float32)
    with open_windows(waveform, 10.0, 10.0) as stream:
        got = list(stream)
    assert [(w.start_s, w.end_s) for w in got] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    np.testing.assert_array_equal(got[2].samples[: 5 * 16_000], waveform[20 * 16_000 :])


def test_window_count_and_iter_windows_agree_with_windows():
    waveform = np.ones(16_000 * 37 + 5, dtype=np.float32)
    for window_s, hop_s in [(10, 10), (10, 3), (4, 9), (1, 1)]:
        expected = windows(waveform, window_s, hop_s)
        assert len(expected) == window_count(waveform.size, window_s * 16_000, hop_s * 16_000)
        lazily = list(iter_windows(waveform, window_s, hop_s))
        assert [(w.start_s, w.end_s) for w in lazily] == [(w.start_s, w.end_s) for w in expected]


def test_memory_held_is_about_one_window_however_long_the_file(tmp_path):
    """The largest source buffer is the same for 1 and 6 minutes: about a window plus margins, not the file."""
    held = {}
    for minutes in (1, 6):
        path = tmp_path / f"{minutes}.flac"
        with sf.SoundFile(path, "w", 48_000, 2, subtype="PCM_16") as sound_file:
            block = np.full((48_000 * 60, 2), 0.1, dtype=np.float32)
            for _ in range(minutes):
                sound_file.write(block)
        with open_windows(path) as stream:
            assert sum(1 for _ in stream) == 6 * minutes
            held[minutes] = stream.max_buffer_bytes
    one_window_with_margins = (10.0 + 2 * RESAMPLE_MARGIN_S) * 48_000 * 4  # mono float32 after down-mixing
    assert held[1] == held[6] <= one_window_with_margins * 1.01


def test_a_file_over_the_limit_is_refused_from_its_header_before_decoding(tmp_path):
    path = _noise(tmp_path / "long.wav", 30.0, 16_000)
    with pytest.raises(AudioTooLongError, match="over the limit of 20 s"):
        open_windows(path, max_duration_s=20.0)


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("missing.wav", None, AudioFileNotFoundError, "not found"),
        ("empty.wav", b"", EmptyAudioError, "empty file"),
        ("junk.wav", b"not audio" * 100, CorruptAudioError, "not a readable audio file"),
    ],
)
def test_unusable_files_are_refused_at_open(tmp_path, name, content, error, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=message):
        open_windows(tmp_path / name)


def test_a_clip_under_half_a_second_is_refused(tmp_path):
    path = _noise(tmp_path / "short.flac", 0.3, 48_000)
    with pytest.raises(AudioTooShortError, match=r"at least 0\.5 s"), open_windows(path) as stream:
        list(stream)


def test_a_truncated_flac_is_answered_up_to_the_cut_with_a_warning(tmp_path):
    """load_audio refuses such a file; losing hours of recording to a damaged tail would help no one."""
    path = tmp_path / "cut.flac"
    _noise(path, 30.0, 48_000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with open_windows(path) as stream:
        got = list(stream)
    assert 1 <= len(got) < 3
    assert type(got[-1].end_s) is float and got[-1].end_s < 20.0  # plain floats: they go to JSON and tables
    assert len(stream.warnings) == 1
    assert "'cut.flac' could not be decoded after" in stream.warnings[0]


@pytest.mark.skipif(ffmpeg_available(), reason="with FFmpeg installed an m4a is decoded, not refused")
def test_a_format_that_needs_ffmpeg_is_named_when_ffmpeg_is_missing(tmp_path):
    path = tmp_path / "call.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 64)
    with pytest.raises(UnsupportedFormatError, match="m4a needs FFmpeg"):
        open_windows(path)
