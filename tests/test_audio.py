"""The audio front end: decoding, mono/16 kHz/clamp, every rejected input, and windowing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from naturelm_core import audio
from naturelm_core.audio import (
    AudioError,
    AudioFileNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    InvalidAudioSourceError,
    InvalidSampleRateError,
    NonFiniteAudioError,
    UnsupportedFormatError,
    Window,
    describe_audio,
    load_audio,
    windows,
)
from naturelm_core.config import SAMPLE_RATE

FORMATS = {  # extension: (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_frequency(waveform: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.fft.rfftfreq(len(waveform), 1 / rate)[np.argmax(spectrum)])


def write(path, data: np.ndarray, rate: int, extension: str = "wav"):
    file_format, subtype = FORMATS[extension]
    sf.write(path, data, rate, format=file_format, subtype=subtype)
    return path


@pytest.fixture
def no_ffmpeg(monkeypatch):
    monkeypatch.setattr(audio, "ffmpeg_available", lambda: False)


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_each_soundfile_format_decodes_to_16k_mono_keeping_the_tone(tmp_path, extension):
    path = write(tmp_path / f"clip.{extension}", tone(660, 1.5, 44100), 44100, extension)
    waveform, duration_s = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    # Lossy codecs add a few ms of encoder delay/padding; the length must still be 1.5 s at 16 kHz.
    assert duration_s == pytest.approx(1.5, abs=0.06)
    assert len(waveform) == round(duration_s * SAMPLE_RATE)
    assert peak_frequency(waveform) == pytest.approx(660, abs=2)
    assert np.abs(waveform).max() == pytest.approx(0.5, abs=0.08)


def test_lossless_wav_round_trip_is_sample_exact_at_16k(tmp_path):
    original = tone(440, 1.0, SAMPLE_RATE)
    path = tmp_path / "x.wav"
    sf.write(path, original, SAMPLE_RATE, subtype="FLOAT")
    waveform, duration_s = load_audio(str(path))
    np.testing.assert_array_equal(waveform, original)
    assert duration_s == 1.0


def test_stereo_is_mixed_to_the_mean_of_channels(tmp_path):
    left = tone(440, 1.0, SAMPLE_RATE, 0.6)
    right = np.full_like(left, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    waveform, _ = load_audio(path)
    np.testing.assert_allclose(waveform, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize(("rate", "freq_hz"), [(44100, 1000.0), (8000, 440.0), (48000, 3000.0)])
def test_resampling_to_16k_keeps_length_and_frequency(rate, freq_hz):
    waveform, duration_s = load_audio(tone(freq_hz, 1.5, rate), sample_rate=rate)
    assert len(waveform) == 24000
    assert duration_s == 1.5
    assert peak_frequency(waveform) == pytest.approx(freq_hz, abs=1)


def test_resampling_filters_content_above_the_new_nyquist_instead_of_aliasing_it():
    # A 12 kHz tone cannot exist at 16 kHz; naive decimation would fold it to 4 kHz at full strength.
    waveform, _ = load_audio(tone(12000, 1.0, 48000), sample_rate=48000)
    assert np.sqrt(np.mean(waveform**2)) < 0.01


def test_output_is_clamped_to_unit_range():
    loud = np.concatenate([np.full(8000, 3.0), np.full(8000, -2.5)]).astype(np.float32)
    waveform, _ = load_audio(loud, sample_rate=SAMPLE_RATE)
    assert waveform.max() == 1.0 and waveform.min() == -1.0


def test_bytes_and_bytearray_sources_match_the_file(tmp_path):
    path = write(tmp_path / "clip.flac", tone(500, 1.0, 22050), 22050, "flac")
    from_path, _ = load_audio(path)
    data = path.read_bytes()
    np.testing.assert_array_equal(load_audio(data)[0], from_path)
    np.testing.assert_array_equal(load_audio(bytearray(data))[0], from_path)


def test_numpy_layouts_and_integer_pcm_are_understood():
    mono = tone(440, 1.0, SAMPLE_RATE)
    stereo_last = np.stack([mono, np.zeros_like(mono)], axis=1)  # (samples, channels), as gradio gives it
    expected = mono / 2
    np.testing.assert_allclose(load_audio(stereo_last, sample_rate=SAMPLE_RATE)[0], expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(stereo_last.T, sample_rate=SAMPLE_RATE)[0], expected, atol=1e-7)
    pcm16 = np.round(mono * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm16, sample_rate=SAMPLE_RATE)[0], mono, atol=1e-4)
    pcm8 = (np.round(mono * 127) + 128).astype(np.uint8)
    np.testing.assert_allclose(load_audio(pcm8, sample_rate=SAMPLE_RATE)[0], mono, atol=1e-2)


def test_the_caller_array_is_not_modified():
    source = np.full(16000, 2.0, dtype=np.float32)
    load_audio(source, sample_rate=SAMPLE_RATE)
    assert (source == 2.0).all()


def test_describe_audio_reports_header_facts(tmp_path):
    path = write(tmp_path / "clip.flac", np.zeros((22050 * 2, 2), dtype=np.float32), 22050, "flac")
    assert describe_audio(path) == {"format": "flac", "sample_rate": 22050, "channels": 2, "duration_s": 2.0}


# --- rejected inputs ------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioFileNotFoundError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(AudioFileNotFoundError, match="directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a recording\n" * 20, bytes(range(256)) * 40, b"RIFF\x24\x00\x00\x00WAVEjunkjunk" * 30],
    ids=["text", "random-bytes", "broken-riff"],
)
def test_unreadable_files_raise_corrupt(tmp_path, content, no_ffmpeg):
    path = tmp_path / "renamed.wav"
    path.write_bytes(content)
    with pytest.raises(CorruptAudioError, match=r"renamed\.wav.*not a readable audio file"):
        load_audio(path)
    with pytest.raises(CorruptAudioError):
        load_audio(content)
    with pytest.raises(CorruptAudioError):
        describe_audio(path)


def test_ffmpeg_formats_without_ffmpeg_name_the_format(tmp_path, no_ffmpeg):
    mp4_header = b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(200)
    path = tmp_path / "voice-memo.m4a"
    path.write_bytes(mp4_header)
    with pytest.raises(UnsupportedFormatError, match=r"m4a needs FFmpeg; convert to wav/flac/ogg/mp3"):
        load_audio(path)
    with pytest.raises(UnsupportedFormatError, match="m4a"):
        describe_audio(path)
    with pytest.raises(UnsupportedFormatError, match="m4a/mp4 needs FFmpeg"):  # sniffed from bytes alone
        load_audio(mp4_header)
    aac_frame = b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(300)
    with pytest.raises(UnsupportedFormatError, match="aac needs FFmpeg"):
        load_audio(aac_frame)


def test_ffmpeg_formats_decode_where_torchcodec_and_ffmpeg_are_installed(tmp_path):
    if not audio.ffmpeg_available():
        pytest.skip("torchcodec with FFmpeg is not installed (optional)")
    import torch
    from torchcodec.encoders import AudioEncoder

    stereo = torch.from_numpy(np.stack([tone(660, 2.0, 44100)] * 2))
    path = tmp_path / "clip.m4a"
    AudioEncoder(stereo, sample_rate=44100).to_file(path)
    for source in (path, path.read_bytes()):
        waveform, duration_s = load_audio(source)
        assert duration_s == pytest.approx(2.0, abs=0.06)
        assert peak_frequency(waveform) == pytest.approx(660, abs=2)
    assert describe_audio(path)["sample_rate"] == 44100
    with pytest.raises(AudioTooLongError, match="from its header"):
        load_audio(path, max_duration_s=1.0)


def test_empty_inputs(tmp_path):
    header_only = tmp_path / "header-only.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    for source in (header_only, zero_bytes, b""):
        with pytest.raises(EmptyAudioError):
            load_audio(source)
    for array in (np.zeros(0, dtype=np.float32), np.zeros((0, 2), dtype=np.float32)):
        with pytest.raises(EmptyAudioError):
            load_audio(array, sample_rate=SAMPLE_RATE)


def test_clips_under_half_a_second_are_rejected(tmp_path):
    path = write(tmp_path / "short.wav", tone(440, 0.2, 44100), 44100)
    with pytest.raises(AudioTooShortError, match=r"0\.20 s.*at least 0\.5 s"):
        load_audio(path)
    with pytest.raises(AudioTooShortError):
        load_audio(tone(440, 0.49, 8000), sample_rate=8000)
    assert load_audio(tone(440, 0.5, 8000), sample_rate=8000)[1] == 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(tmp_path, bad):
    samples = tone(440, 1.0, SAMPLE_RATE)
    samples[1234] = bad
    with pytest.raises(NonFiniteAudioError, match="NaN or infinite"):
        load_audio(samples, sample_rate=SAMPLE_RATE)
    path = tmp_path / "bad.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match=r"bad\.wav"):
        load_audio(path)


def test_too_long_is_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = write(tmp_path / "long.flac", tone(440, 3.0, 8000), 8000, "flac")
    assert load_audio(path, max_duration_s=3.0)[1] == 3.0

    def refuse_to_decode(*args, **kwargs):
        raise AssertionError("decoded a file whose header already says it is too long")

    # Just over the limit: header estimates get slack, so this is refused exactly, after decoding.
    with pytest.raises(AudioTooLongError, match=r"3\.0 s long, over the limit of 2\.9 s"):
        load_audio(path, max_duration_s=2.9)
    monkeypatch.setattr(sf.SoundFile, "read", refuse_to_decode)
    with pytest.raises(AudioTooLongError, match=r"3\.0 s long \(from its header\), over the limit of 2 s"):
        load_audio(path, max_duration_s=2.0)
    with pytest.raises(AudioTooLongError):
        load_audio(tone(440, 3.0, 8000), sample_rate=8000, max_duration_s=2.0)
    with pytest.raises(ValueError, match="max_duration_s"):
        load_audio(path, max_duration_s=0)


@pytest.mark.parametrize("rate", [0, -16000, 500, 999, 10**7, 44100.5, float("nan"), True, "16000"])
def test_invalid_array_sample_rates(rate):
    with pytest.raises(InvalidSampleRateError, match="sample rate"):
        load_audio(np.zeros(20000, dtype=np.float32), sample_rate=rate)


def test_sample_rate_rules_at_the_edges(tmp_path):
    with pytest.raises(InvalidSampleRateError, match="needs its sample_rate"):
        load_audio(np.zeros(20000, dtype=np.float32))
    assert load_audio(np.zeros(1000, dtype=np.float32), sample_rate=1000)[1] == 1.0
    assert load_audio(np.zeros(768000, dtype=np.float32), sample_rate=768000.0)[1] == 1.0
    low_rate_file = tmp_path / "low.wav"
    sf.write(low_rate_file, np.zeros(500), 500)
    with pytest.raises(InvalidSampleRateError, match=r"500 Hz is not valid"):
        load_audio(low_rate_file)
    absurd_file = tmp_path / "absurd.wav"
    sf.write(absurd_file, np.zeros(2000), 1_000_000)
    with pytest.raises(InvalidSampleRateError, match=r"1000000 Hz"):
        load_audio(absurd_file)


def test_wrong_source_types_and_shapes(tmp_path):
    with pytest.raises(InvalidAudioSourceError):
        load_audio(None)
    with pytest.raises(InvalidAudioSourceError):
        load_audio([0.0] * 16000, sample_rate=SAMPLE_RATE)
    with pytest.raises(InvalidAudioSourceError, match="1-D or 2-D"):
        load_audio(np.zeros((2, 2, 16000), dtype=np.float32), sample_rate=SAMPLE_RATE)
    with pytest.raises(InvalidAudioSourceError, match="dtype"):
        load_audio(np.zeros(16000, dtype=np.complex64), sample_rate=SAMPLE_RATE)
    path = write(tmp_path / "ok.wav", tone(440, 1.0, 8000), 8000)
    with pytest.raises(InvalidAudioSourceError, match="only for numpy arrays"):
        load_audio(path, sample_rate=8000)


def test_every_audio_error_is_a_value_error():
    for error in (AudioFileNotFoundError, CorruptAudioError, UnsupportedFormatError, EmptyAudioError):
        assert issubclass(error, AudioError) and issubclass(error, ValueError)
    for error in (AudioTooShortError, AudioTooLongError, NonFiniteAudioError, InvalidSampleRateError):
        assert issubclass(error, AudioError)


# --- windows --------------------------------------------------------------------------------------


def spans(result: list[Window]) -> list[tuple[float, float]]:
    return [(w.start_s, w.end_s) for w in result]


def test_exact_window_length_gives_one_window():
    result = windows(np.ones(160000, dtype=np.float32))
    assert spans(result) == [(0.0, 10.0)]
    assert (result[0].samples == 1).all()


def test_trailing_partial_window_is_kept_and_zero_padded():
    waveform = np.arange(1, 25 * SAMPLE_RATE + 1, dtype=np.float32)
    result = windows(waveform)
    assert spans(result) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert all(len(w.samples) == 160000 and w.samples.dtype == np.float32 for w in result)
    np.testing.assert_array_equal(np.concatenate([w.samples for w in result])[: len(waveform)], waveform)
    assert (result[2].samples[80000:] == 0).all() and (result[2].samples[:80000] != 0).all()


def test_short_clip_gives_one_padded_window():
    result = windows(np.ones(SAMPLE_RATE * 3, dtype=np.float32))
    assert spans(result) == [(0.0, 3.0)]
    assert result[0].samples.sum() == SAMPLE_RATE * 3 and len(result[0].samples) == 160000


def test_overlapping_hop_never_adds_a_window_the_previous_one_covers():
    waveform = np.ones(25 * SAMPLE_RATE, dtype=np.float32)
    assert spans(windows(waveform, hop_s=5.0)) == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]
    assert spans(windows(waveform[: 22 * SAMPLE_RATE], hop_s=5.0))[-1] == (15.0, 22.0)
    np.testing.assert_array_equal(windows(waveform, hop_s=5.0)[1].samples, waveform[80000:240000])


def test_custom_window_length_and_sample_rate():
    result = windows(np.ones(7 * 1000, dtype=np.float32), window_s=3.0, hop_s=3.0, sample_rate=1000)
    assert spans(result) == [(0.0, 3.0), (3.0, 6.0), (6.0, 7.0)]
    assert [len(w.samples) for w in result] == [3000, 3000, 3000]


@pytest.mark.parametrize(("window_s", "hop_s"), [(0, 10), (10, 0), (-1, 10), (10, float("nan")), (1e-6, 1)])
def test_window_arguments_are_validated(window_s, hop_s):
    with pytest.raises(ValueError, match=r"window_s|hop_s"):
        windows(np.ones(16000, dtype=np.float32), window_s=window_s, hop_s=hop_s)


def test_windows_rejects_empty_and_multichannel():
    with pytest.raises(EmptyAudioError):
        windows(np.zeros(0, dtype=np.float32))
    with pytest.raises(InvalidAudioSourceError, match="1-D"):
        windows(np.zeros((2, 16000), dtype=np.float32))


def test_windows_are_immutable_records():
    window = windows(np.ones(16000, dtype=np.float32))[0]
    with pytest.raises(AttributeError):
        window.start_s = 1.0


# --- the shared example recordings ----------------------------------------------------------------


def test_every_shared_example_recording_loads(shared_dir):
    folder = shared_dir / "audio"
    if not folder.is_dir():
        pytest.skip("../shared/audio is absent")
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    assert paths
    for path in paths:
        waveform, duration_s = load_audio(path)
        header = describe_audio(path)
        # MP3 headers estimate length from byte size, so ID3 tags make them read a few % long.
        assert 0.9 * header["duration_s"] <= duration_s <= header["duration_s"] + 1e-3, path.name
        assert np.abs(waveform).max() > 0, path.name
        assert len(windows(waveform)) == max(1, int(np.ceil(duration_s / 10 - 1e-9))), path.name


def test_file_like_objects_are_refused_with_a_clear_type_error():
    buffer = io.BytesIO(b"abc")
    with pytest.raises(InvalidAudioSourceError):
        load_audio(buffer)
