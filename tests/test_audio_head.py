"""load_audio_head: the first window of a recording, decoding only what it needs, equal to the whole file's cut.

Equality is exact (np.array_equal), not a tolerance: the head is read up to the resampler's reach past the window
(naturelm_core.audio.head_source_frames), and the resampler's output there depends on nothing else.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import soundfile as sf
import torchaudio.functional
from torchaudio.functional.functional import _get_sinc_resample_kernel

from naturelm_core import audio
from naturelm_core.audio import (
    HEAD_MIN_SOURCE_FRAMES,
    RESAMPLE_LOWPASS_WIDTH,
    RESAMPLE_ROLLOFF,
    AudioError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    InvalidAudioSourceError,
    NonFiniteAudioError,
    UnsupportedFormatError,
    head_source_frames,
    load_audio,
    load_audio_head,
    resampler_half_width,
)
from naturelm_core.config import SAMPLE_RATE

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", None)}
WINDOW = 160_000  # 10 s at 16 kHz


def noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Broadband audio, so every tap of the resampler's filter matters; a few samples clip, as real files do."""
    samples = np.random.default_rng(seed).normal(0.0, 0.35, (round(seconds * rate), channels))
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def write(path, samples: np.ndarray, rate: int, extension: str | None = None):
    format_name, subtype = FORMATS[extension or path.suffix.lstrip(".")]
    sf.write(path, samples, rate, format=format_name, subtype=subtype)
    return path


# --- the resampler facts the read-ahead relies on ------------------------------------------------------------


@pytest.mark.parametrize("rate", [1_000, 8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000, 768_000])
def test_the_half_width_is_torchaudios_kernel_width(rate):
    """torchaudio's sinc kernel spans `orig + 2 * width` source frames per block of `new` outputs."""
    gcd = np.gcd(rate, SAMPLE_RATE)
    kernel, width = _get_sinc_resample_kernel(rate, SAMPLE_RATE, int(gcd), RESAMPLE_LOWPASS_WIDTH, RESAMPLE_ROLLOFF)
    assert resampler_half_width(rate) == width
    assert kernel.shape == (SAMPLE_RATE // gcd, 1, rate // gcd + 2 * width)


def test_the_named_filter_is_torchaudios_default_so_load_audio_resamples_as_before():
    defaults = inspect.signature(torchaudio.functional.resample).parameters
    assert defaults["lowpass_filter_width"].default == RESAMPLE_LOWPASS_WIDTH == 6
    assert defaults["rolloff"].default == RESAMPLE_ROLLOFF == 0.99
    assert defaults["resampling_method"].default == "sinc_interp_hann"
    assert [resampler_half_width(rate) for rate in (44_100, 48_000, 22_050)] == [17, 19, 9]


def test_a_head_reads_the_window_the_filter_reach_and_never_less_than_the_minimum():
    assert head_source_frames(WINDOW, 44_100) == 441_000 + 17  # 1000 blocks of 441 frames (160 outputs each)
    assert head_source_frames(WINDOW, 48_000) == 480_000 + 19
    assert head_source_frames(WINDOW, SAMPLE_RATE) == WINDOW  # nothing to resample
    assert head_source_frames(8_000, 22_050) == HEAD_MIN_SOURCE_FRAMES
    assert head_source_frames(1, 768_000) == 384_000  # MIN_DURATION_S, so a read stopping there proves the length


# --- equal to the whole file's window, bit for bit -------------------------------------------------------------


@pytest.mark.parametrize("seconds", [4.0, 10.0, 12.5], ids=["shorter", "equal", "longer"])
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050, 16_000])
@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_the_head_is_the_whole_files_first_window_bit_for_bit(tmp_path, extension, rate, channels, seconds):
    path = write(tmp_path / f"clip.{extension}", noise(seconds, rate, channels), rate)
    whole, _ = load_audio(path)
    head = load_audio_head(path, 10.0)
    assert head.dtype == np.float32
    assert np.array_equal(head, whole[:WINDOW])


@pytest.mark.parametrize("window_s", [3.0, 5.0, 0.7])
@pytest.mark.parametrize("rate", [22_050, 11_025, 44_100])
def test_shorter_windows_too_even_where_the_filter_alone_would_read_under_the_minimum(tmp_path, rate, window_s):
    """At 0.7 s from 22.05 kHz the filter needs 15,444 frames; reading only those, torch's convolution would sum in
    another order than over the whole file (HEAD_MIN_SOURCE_FRAMES says why), and the last bits would differ."""
    path = write(tmp_path / "clip.flac", noise(20.0, rate), rate)
    whole, _ = load_audio(path)
    assert np.array_equal(load_audio_head(path, window_s), whole[: round(window_s * SAMPLE_RATE)])


def test_encoded_bytes_give_the_same_head_as_the_file(tmp_path):
    path = write(tmp_path / "clip.flac", noise(15.0, 44_100, 2), 44_100)
    assert np.array_equal(load_audio_head(path.read_bytes(), 10.0), load_audio_head(path, 10.0))
    assert np.array_equal(load_audio_head(bytearray(path.read_bytes()), 10.0), load_audio(path)[0][:WINDOW])


# --- only the head is read -------------------------------------------------------------------------------------


def test_a_ten_minute_flac_is_not_read_whole(tmp_path, frames_read):
    rate = 44_100
    t = np.arange(600 * rate) / rate
    path = tmp_path / "dawn-chorus.flac"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 2_000 * t)).astype(np.float32), rate)  # a tone: a small file
    head = load_audio_head(path, 10.0)
    assert frames_read.frames == head_source_frames(WINDOW, rate) == 441_017  # of 26,460,000
    assert head.shape == (WINDOW,)


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_every_soundfile_format_stops_after_the_head(tmp_path, frames_read, extension):
    path = write(tmp_path / f"long.{extension}", noise(40.0, 48_000), 48_000)
    load_audio_head(path, 10.0)
    assert frames_read.frames == head_source_frames(WINDOW, 48_000)


# --- the checks ------------------------------------------------------------------------------------------------


def error_of(load, *args, **kwargs) -> tuple[type, str]:
    with pytest.raises(AudioError) as caught:
        load(*args, **kwargs)
    return type(caught.value), str(caught.value)


def test_a_file_the_head_reads_to_its_end_is_refused_as_load_audio_refuses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "ffmpeg_available", lambda: False)
    short = write(tmp_path / "short.wav", noise(0.2, 44_100), 44_100)
    header_only = write(tmp_path / "header-only.wav", np.zeros((0, 1), dtype=np.float32), 16_000)
    full = write(tmp_path / "full.wav", noise(12.0, 16_000), 16_000).read_bytes()
    (tmp_path / "broken.wav").write_bytes(full[: 44 + 5000])
    (tmp_path / "renamed.wav").write_bytes(b"this is not audio at all, just text")
    (tmp_path / "memo.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(200))
    nan = noise(3.0, 16_000)
    nan[30_000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    sources = [short, header_only, b"", *(tmp_path / n for n in ("broken.wav", "renamed.wav", "memo.m4a", "nan.wav"))]
    expected = [
        AudioTooShortError,
        EmptyAudioError,
        EmptyAudioError,
        CorruptAudioError,
        CorruptAudioError,
        UnsupportedFormatError,
        NonFiniteAudioError,
    ]
    for source, kind in zip(sources, expected, strict=True):
        assert error_of(load_audio_head, source, 10.0) == error_of(load_audio, source)
        assert error_of(load_audio_head, source, 10.0)[0] is kind


def test_too_long_follows_the_headers_exact_length_without_reading_the_rest(tmp_path, frames_read):
    path = write(tmp_path / "long.flac", noise(30.0, 44_100), 44_100)
    refused = error_of(load_audio, path, max_duration_s=28.0)  # decoded whole, then refused
    assert refused == (AudioTooLongError, "'long.flac' is 30.0 s long, over the limit of 28 s; trim or split it")
    assert frames_read.frames == 30 * 44_100
    assert error_of(load_audio_head, path, 10.0, max_duration_s=28.0) == refused
    assert frames_read.frames == 30 * 44_100 + head_source_frames(WINDOW, 44_100)
    assert error_of(load_audio_head, path, 10.0, max_duration_s=20.0) == error_of(load_audio, path, max_duration_s=20)
    assert load_audio_head(path, 10.0, max_duration_s=30.0).shape == (WINDOW,)


def test_an_mp3s_estimated_length_is_judged_with_the_header_slack_only(tmp_path):
    """Intended: libsndfile estimates an MP3's length from its size (ID3 tags make it read long), so without
    decoding to the end an MP3 is refused only where load_audio refuses it before decoding."""
    path = write(tmp_path / "long.mp3", noise(30.0, 44_100), 44_100)
    with pytest.raises(AudioTooLongError, match="over the limit of 28 s"):
        load_audio(path, max_duration_s=28.0)
    assert load_audio_head(path, 10.0, max_duration_s=28.0).shape == (WINDOW,)
    assert error_of(load_audio_head, path, 10.0, max_duration_s=20.0) == error_of(load_audio, path, max_duration_s=20)


def test_damage_after_the_head_is_not_seen_but_in_it_is(tmp_path):
    """Intended: the head is all the model hears, so a NaN after it no longer costs the recording its answer."""
    samples = noise(20.0, 16_000)
    samples[15 * 16_000] = np.nan
    late = tmp_path / "late.wav"
    sf.write(late, samples, 16_000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match=r"'late\.wav' contains NaN"):
        load_audio(late)
    assert np.array_equal(load_audio_head(late, 10.0), samples[:WINDOW, 0])
    samples[5 * 16_000] = np.inf
    early = tmp_path / "early.wav"
    sf.write(early, samples, 16_000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match=r"'early\.wav' contains NaN or infinite samples"):
        load_audio_head(early, 10.0)


def test_a_head_is_not_refused_for_silence_as_sweeps_answer_every_sample(tmp_path):
    """Silent for its first 10 s, loud after: the head is the silence, which is what the model hears."""
    samples = np.concatenate([np.zeros((10 * 44_100, 1), np.float32), noise(10.0, 44_100)])
    path = write(tmp_path / "late-start.flac", samples, 44_100)
    head = load_audio_head(path, 10.0)
    assert np.array_equal(head, load_audio(path)[0][:WINDOW])
    assert np.abs(head[: WINDOW - 160]).max() == 0.0  # the last block of 160 outputs reaches into the noise


def test_bad_arguments_are_refused(tmp_path):
    path = write(tmp_path / "clip.wav", noise(1.0, 16_000), 16_000)
    with pytest.raises(InvalidAudioSourceError, match="reads files or encoded bytes"):
        load_audio_head(np.zeros(16_000, np.float32), 10.0)
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        load_audio_head(path, 0.0)
    with pytest.raises(ValueError, match="max_duration_s must be positive"):
        load_audio_head(path, 10.0, max_duration_s=0)
