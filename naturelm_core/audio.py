"""Audio front end: any recording a user hands us -> the 16 kHz mono waveform NatureLM-audio expects.

NatureLM-audio was trained on 16 kHz mono audio clamped to [-1, 1] and cut into 10 s windows, so
every source (a path, raw bytes, or a numpy array with its rate) is brought to exactly that.
wav, flac, ogg and mp3 decode through soundfile (libsndfile) so the app needs no FFmpeg; other
containers (m4a, aac, ...) go through torchcodec only where it and FFmpeg are installed.

Every way a recording can be unusable raises its own `AudioError` subclass with a message a
user can act on, and the cheap checks (duration from the header, sample rate) run before a
possibly huge file is decoded into memory. `load_audio_head` reads only the start of a file, for
callers (sweeps) that use its first window only.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms

from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS

MAX_DURATION_S = 600.0
MIN_DURATION_S = 0.5
QUIET_PEAK_DBFS = -60.0  # a recording whose loudest sample is below this is all but silent
TRUNCATION_TOLERANCE_S = 0.05
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
HEADER_DURATION_SLACK = 1.25
SOUNDFILE_FORMATS = ("wav", "flac", "ogg", "mp3")
# libsndfile formats whose frame count is an estimate (from the byte size); every other header's count is exact.
ESTIMATED_LENGTH_FORMATS = frozenset({"MP3"})
# torchaudio.functional.resample's defaults, named because load_audio_head's read-ahead follows this filter.
RESAMPLE_LOWPASS_WIDTH = 6  # zero crossings of the windowed sinc kept either side of its centre
RESAMPLE_ROLLOFF = 0.99  # the low-pass cut-off, as a fraction of the lower rate's Nyquist frequency
# A head is never read shorter than this: PyTorch's CPU convolution sums with oneDNN over more than 20,480 (padded)
# input samples and with its own loop below that (torch 2.x, `use_mkldnn`), in different orders, so a shorter head could
# differ from the whole file's resampling in the last bit.
HEAD_MIN_SOURCE_FRAMES = 1 << 15
# Containers libsndfile cannot open; naming them lets us say "needs FFmpeg" instead of "corrupt".
FFMPEG_ONLY_FORMATS = frozenset({"m4a", "aac", "mp4", "m4b", "3gp", "wma", "webm", "mka", "amr", "ac3", "opus"})

EncodedSource = str | os.PathLike | bytes | bytearray | memoryview
AudioSource = EncodedSource | np.ndarray


class AudioError(ValueError):
    """Base of every "this recording cannot be used" error, so a UI can catch them all at once."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The path does not name an existing file."""


class InvalidAudioSourceError(AudioError, TypeError):
    """The source is not a path, bytes or a 1-D/2-D numeric array, or its arguments do not fit it."""


class CorruptAudioError(AudioError):
    """The data is not a readable recording (truncated, damaged, or not audio at all)."""


class UnsupportedFormatError(AudioError):
    """A real audio format that this installation cannot decode (FFmpeg formats without FFmpeg)."""


class EmptyAudioError(AudioError):
    """The recording holds no samples."""


class AudioTooShortError(AudioError):
    """Under MIN_DURATION_S: too little signal for the model to say anything meaningful."""


class AudioTooLongError(AudioError):
    """Over the caller's max_duration_s; bounds memory and inference time."""


class NonFiniteAudioError(AudioError):
    """NaN or infinite samples, which would silently poison every feature downstream."""


class InvalidSampleRateError(AudioError):
    """A sample rate that is missing, not a whole number, or outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE."""


class SilentAudioError(AudioError):
    """Every sample is zero: there is nothing for the model to hear, and any answer would be invented."""


@dataclass(frozen=True, eq=False)
class Recording:
    """A user's recording, decoded, with what a researcher should know before trusting an answer about it.

    `warnings` holds plain sentences (a truncated file, a near-silent one); they never stop the
    recording from being answered, but a UI shows them beside the answer.
    """

    waveform: np.ndarray
    duration_s: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Window:
    """One model window; eq=False because ndarray fields make value equality ambiguous.

    `samples` is always the full window length (zero-padded at the end); `end_s` is where the real
    audio stops, so a UI can label a trailing partial window honestly.
    """

    start_s: float
    end_s: float
    samples: np.ndarray


@functools.cache
def ffmpeg_available() -> bool:
    """Whether torchcodec imports, which it only does when it finds FFmpeg's shared libraries."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # ImportError when absent, RuntimeError/OSError when FFmpeg's libraries are missing
        return False
    return True


def load_audio(
    source: AudioSource, sample_rate: float | None = None, max_duration_s: float = MAX_DURATION_S
) -> tuple[np.ndarray, float]:
    """Return (float32 mono waveform at SAMPLE_RATE in [-1, 1], its duration in seconds).

    `sample_rate` is required for a numpy source and refused for files, whose header carries it.
    A 2-D array may be (samples, channels) or (channels, samples): the shorter axis is channels.
    Integer arrays (e.g. int16 from a browser recording) are scaled to [-1, 1] by their type's range.
    """
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise InvalidSampleRateError("a numpy array source needs its sample_rate")
        rate = _checked_sample_rate(sample_rate, "the array")
        frames = _frames_from_array(source)
        _check_length(len(frames), rate, max_duration_s, "the array")
    elif isinstance(source, EncodedSource):
        if sample_rate is not None:
            raise InvalidAudioSourceError("sample_rate is only for numpy arrays; files carry their own in the header")
        frames, rate, _ = _decode(source, max_duration_s)
    else:
        raise InvalidAudioSourceError(
            f"audio source must be a path, bytes or a numpy array with its sample_rate, got {type(source).__name__}"
        )
    waveform = _to_mono_16k(frames, rate)
    return waveform, len(waveform) / SAMPLE_RATE


def load_audio_head(source: EncodedSource, seconds: float, max_duration_s: float = MAX_DURATION_S) -> np.ndarray:
    """The first `seconds` of `load_audio(source)`'s waveform (all of it, if shorter), decoding little more than that.

    Why: a sweep asks about a recording's first model window only, and decoding and resampling a 10-minute file
    for its first 10 s is sixty times the work. wav, flac, ogg and mp3 are read from the start up to
    `head_source_frames` (the resampler's reach past the head included), so the result equals
    `load_audio(source)[0][:round(seconds * SAMPLE_RATE)]` bit for bit; formats that need FFmpeg are decoded whole
    and cut.

    The checks are load_audio's, on what is read. Where that stops before the end of the file, the end is not seen,
    which changes three things, intentionally:
    - too long: judged by the header's length, exactly where the header's count is exact (wav, flac, ogg; a
      truncated FLAC by the length it declares) and with HEADER_DURATION_SLACK where it is an estimate (mp3);
    - damage, NaN or infinite samples after the head are not found: the head, all the model hears, is answered;
    - like load_audio, a silent head is not refused (a benchmark answers every sample it has).
    A read that stops short of what it asked for has reached the end of the file, so the length checks (empty, too
    short, corrupt rather than short) are then load_audio's own; one that does not has read at least
    MIN_DURATION_S.
    """
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
    if isinstance(source, np.ndarray) or not isinstance(source, EncodedSource):
        raise InvalidAudioSourceError(f"load_audio_head reads files or encoded bytes, got {type(source).__name__}")
    head_samples = _seconds_to_samples(seconds, SAMPLE_RATE, "seconds")
    frames, rate, _ = _decode(source, max_duration_s, head_samples)
    return _to_mono_16k(frames, rate)[:head_samples]


def head_source_frames(head_samples: int, rate: int) -> int:
    """Source frames at `rate` whose resampling gives the first `head_samples` at 16 kHz exactly as resampling the
    whole recording does.

    torchaudio's resampler is a strided convolution: each block of `new` output samples (the rates divided by their
    gcd, `orig` -> `new`) is made from the block's `orig` source frames and `resampler_half_width` frames either
    side, so those are all the head needs; reading at least HEAD_MIN_SOURCE_FRAMES keeps the convolution's
    summation order, and MIN_DURATION_S means a read that stops here proves the recording long enough.
    """
    needed = head_samples
    if rate != SAMPLE_RATE:
        orig, new = _reduced_rates(rate)
        needed = -(-head_samples // new) * orig + resampler_half_width(rate)
    return max(needed, HEAD_MIN_SOURCE_FRAMES, math.ceil(MIN_DURATION_S * rate))


def resampler_half_width(rate: int) -> int:
    """How many source frames past its own block `_to_mono_16k`'s resampler reads: its torchaudio kernel's `width`
    (e.g. 17 at 44.1 kHz, 19 at 48 kHz, 9 at 22.05 kHz)."""
    return _sinc_kernel(rate)[1]


def _reduced_rates(rate: int) -> tuple[int, int]:
    """(orig, new): `rate` and 16 kHz divided by their gcd, the block sizes torchaudio's resampler works in."""
    divisor = math.gcd(rate, SAMPLE_RATE)
    return rate // divisor, SAMPLE_RATE // divisor


def load_recording(source: EncodedSource, max_duration_s: float = MAX_DURATION_S) -> Recording:
    """A user's file for the app or the command line: `load_audio`, plus the checks a person needs.

    Digital silence is refused (`SilentAudioError`): the model would still answer, and the answer
    would be about nothing. A near-silent recording (peak under QUIET_PEAK_DBFS) and a truncated
    file (less audio than its header declares) are answered with a warning naming what was found.
    Sweeps call `load_audio` instead: a benchmark answers every sample it has, silent or not.
    """
    if isinstance(source, np.ndarray) or not isinstance(source, EncodedSource):
        raise InvalidAudioSourceError(f"load_recording reads files or encoded bytes, got {type(source).__name__}")
    frames, rate, truncation = _decode(source, max_duration_s)
    waveform = _to_mono_16k(frames, rate)
    duration_s = len(waveform) / SAMPLE_RATE
    label = _label(source)
    warnings = [truncation] if truncation else []
    peak = float(np.abs(frames).max())
    if peak == 0.0:
        raise SilentAudioError(f"{label} is silent (every sample is zero): there is nothing for the model to hear")
    peak_dbfs = 20.0 * math.log10(peak)
    if peak_dbfs < QUIET_PEAK_DBFS:
        warnings.append(
            f"{label} is nearly silent (loudest sample {peak_dbfs:.0f} dBFS, under {QUIET_PEAK_DBFS:.0f} dBFS): "
            "the model may hear nothing, and its answer may be invented"
        )
    return Recording(waveform, duration_s, tuple(warnings))


def windows(
    waveform: np.ndarray,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> list[Window]:
    """Cut a waveform into fixed-length windows, keeping the trailing partial one (upstream drops it).

    A new window starts every `hop_s` until one reaches the end of the audio, so no window ever
    covers only audio its predecessor already covered (10.0 s with 10 s windows is one window).
    """
    return list(iter_windows(waveform, window_s, hop_s, sample_rate))


def iter_windows(
    waveform: np.ndarray,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[Window]:
    """`windows()` one at a time: an hour cut at a 1 s hop is 3600 padded copies, which need not coexist.

    The arguments are checked at the call, not at the first window.
    """
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise InvalidAudioSourceError(f"windows() needs a 1-D mono waveform, got shape {samples.shape}")
    if samples.size == 0:
        raise EmptyAudioError("cannot cut an empty waveform into windows")
    if sample_rate <= 0:
        raise InvalidSampleRateError(f"sample_rate must be positive, got {sample_rate!r}")
    window_len = _seconds_to_samples(window_s, sample_rate, "window_s")
    hop_len = _seconds_to_samples(hop_s, sample_rate, "hop_s")
    return _cut(samples, window_len, hop_len, sample_rate)


def window_count(n_samples: int, window_len: int, hop_len: int) -> int:
    """How many windows `windows()` cuts from `n_samples` (lengths in samples): the first, then one per hop
    while the previous window and hop both end before the audio does."""
    reach = max(window_len, hop_len)
    return 1 + max(0, -(-(n_samples - reach) // hop_len))


def _cut(samples: np.ndarray, window_len: int, hop_len: int, sample_rate: int) -> Iterator[Window]:
    for index in range(window_count(samples.size, window_len, hop_len)):
        start = index * hop_len
        padded = np.zeros(window_len, dtype=np.float32)
        chunk = samples[start : start + window_len]
        padded[: chunk.size] = chunk
        yield Window(start / sample_rate, (start + chunk.size) / sample_rate, padded)


def describe_audio(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts for display (format, original sample rate, channels, duration), without decoding.

    The duration of a compressed file is the header's estimate (an MP3's reads a few % long when it
    carries ID3 tags); load_audio's duration is exact.
    """
    path = _existing_file(path)
    try:
        info = sf.info(str(path))
    except sf.SoundFileError:
        if not ffmpeg_available():
            _raise_unreadable(f"'{path.name}'", _format_name(path, _read_head(path)))
        metadata = _ffmpeg_decoder(str(path), path.name).metadata
        return {
            "format": path.suffix.lstrip(".").lower() or (metadata.codec or "unknown"),
            "sample_rate": metadata.sample_rate,
            "channels": metadata.num_channels,
            "duration_s": metadata.duration_seconds_from_header,
        }
    return {
        "format": info.format.lower(),
        "sample_rate": info.samplerate,
        "channels": info.channels,
        "duration_s": info.frames / info.samplerate if info.samplerate else 0.0,
    }


def _label(source: EncodedSource) -> str:
    return "the audio data" if isinstance(source, bytes | bytearray | memoryview) else f"'{Path(source).name}'"


def _decode(
    source: EncodedSource, max_duration_s: float, head_samples: int | None = None
) -> tuple[np.ndarray, int, str | None]:
    """(frames [n, channels] float32, sample rate, a truncation warning or None) from a file or encoded
    bytes, every check applied.

    With `head_samples`, a soundfile format is read only as far as those 16 kHz samples need (load_audio_head
    says what that changes) and no truncation warning is made: the end of the file is not read.
    """
    label = _label(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise EmptyAudioError("the audio data is empty (0 bytes)")
        opened, head = io.BytesIO(data), data[:16]
    else:
        path = _existing_file(source)
        if path.stat().st_size == 0:
            raise EmptyAudioError(f"{label} is an empty file (0 bytes)")
        data = opened = str(path)
        head = _read_head(path)
    try:
        sound_file = sf.SoundFile(opened)
    except sf.SoundFileError:
        if not ffmpeg_available():
            _raise_unreadable(label, _format_name(source, head))
        frames, rate = _decode_with_ffmpeg(data, label, max_duration_s)
        truncation = None
    else:
        declared_frames = _declared_frames(sound_file, data)
        frames, rate = _decode_with_soundfile(sound_file, label, max_duration_s, declared_frames, head_samples)
        truncation = (
            None
            if head_samples is not None
            else _truncation_warning(sound_file, data, label, len(frames), declared_frames, rate)
        )
    if not np.isfinite(frames).all():
        raise NonFiniteAudioError(f"{label} contains NaN or infinite samples")
    return frames, rate, truncation


def _decode_with_soundfile(
    sound_file: sf.SoundFile,
    label: str,
    max_duration_s: float,
    declared_frames: int | None,
    head_samples: int | None = None,
) -> tuple[np.ndarray, int]:
    """The file's frames, or with `head_samples` its first `head_source_frames`; a head read that stops before the
    end of the file is judged too long by the header, the only length it knows (see load_audio_head)."""
    with sound_file:
        rate = _checked_sample_rate(sound_file.samplerate, label)
        _refuse_if_header_too_long(sound_file.frames / rate, max_duration_s, label)
        wanted = -1 if head_samples is None else head_source_frames(head_samples, rate)
        frames = _read_frames(sound_file, label, wanted)
    if len(frames) == wanted:
        if sound_file.format not in ESTIMATED_LENGTH_FORMATS:
            _check_length(sound_file.frames, rate, max_duration_s, label)
        return frames, rate
    if declared_frames is not None and len(frames) / rate < MIN_DURATION_S <= declared_frames / rate:
        raise CorruptAudioError(
            f"{label} is corrupt or truncated: its header declares {declared_frames / rate:.2f} s of audio, but "
            f"only {len(frames) / rate:.2f} s could be decoded"
        )
    _check_length(len(frames), rate, max_duration_s, label)
    return frames, rate


def _read_frames(sound_file: sf.SoundFile, label: str, frames: int) -> np.ndarray:
    """Up to `frames` frames from the start (-1: all of them), [n, channels] float32."""
    try:
        return sound_file.read(frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as error:
        raise CorruptAudioError(f"{label} is damaged and could not be decoded: {error}") from error


def _declared_frames(sound_file: sf.SoundFile, data: str | bytes) -> int | None:
    """How many frames the file says it holds, where that is knowable: None where only an estimate exists.

    libsndfile clips a WAV's frame count to the bytes present, so the declared count is read from the
    RIFF data chunk itself; an MP3's count is an estimate from its size, so only a last frame cut short
    reveals truncation there (a cut exactly between frames cannot be told from a shorter recording).
    """
    if sound_file.format == "WAV":
        return _wav_declared_frames(data)
    return sound_file.frames if sound_file.format == "FLAC" else None


def _truncation_warning(
    sound_file: sf.SoundFile, data: str | bytes, label: str, decoded: int, declared: int | None, rate: int
) -> str | None:
    if sound_file.format == "MP3" and _mp3_last_frame_cut(data):
        return (
            f"{label} looks truncated: its last MP3 frame is cut short ({decoded / rate:.2f} s could be decoded); "
            "the answer covers the decoded part only"
        )
    if declared is None or (declared - decoded) / rate <= TRUNCATION_TOLERANCE_S:
        return None
    if declared > decoded and declared - decoded > rate * 3600 * 24:
        return None  # a streaming WAV's placeholder size, not a promise
    return (
        f"{label} looks truncated: its header declares {declared / rate:.2f} s but {decoded / rate:.2f} s could be "
        "decoded; the answer covers the decoded part only"
    )


def _read_bytes(data: str | bytes, size: int | None = None) -> bytes:
    if isinstance(data, bytes):
        return data if size is None else data[:size]
    with open(data, "rb") as handle:
        return handle.read() if size is None else handle.read(size)


def _wav_declared_frames(data: str | bytes) -> int | None:
    """Frames declared by a RIFF/WAVE file's data chunk (bytes / block align), or None if unreadable."""
    head = _read_bytes(data, 1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, block_align = 12, None
    while position + 8 <= len(head):
        chunk, size = head[position : position + 4], int.from_bytes(head[position + 4 : position + 8], "little")
        if chunk == b"fmt " and position + 22 <= len(head):
            block_align = int.from_bytes(head[position + 20 : position + 22], "little")
        if chunk == b"data":
            return size // block_align if block_align else None
        position += 8 + size + (size & 1)
    return None


_MPEG_BITRATES_KBPS = {  # (version 1?, layer) -> bitrate index 1..14
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_TRAILERS = (b"TAG", b"APETAGEX", b"LYRICSBEGIN")


def _mp3_last_frame_cut(data: str | bytes) -> int | None:
    """Samples missing from an MP3 whose last frame is cut short (0 when the frames end cleanly), or None
    when the stream is not plain MPEG-1/2 layer III frames that can be walked."""
    raw = _read_bytes(data)
    position = 0
    if raw[:3] == b"ID3" and len(raw) >= 10:
        position = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(raw[6:10]))  # syncsafe size
    walked = 0
    while position + 4 <= len(raw):
        header = int.from_bytes(raw[position : position + 4], "big")
        version, layer = (header >> 19) & 3, (header >> 17) & 3
        bitrate_index, rate_index = (header >> 12) & 15, (header >> 10) & 3
        if header >> 21 != 0x7FF or version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
            if walked and raw[position:].startswith(_MP3_TRAILERS):
                return 0
            return 0 if walked else None
        mpeg1 = version == 3
        bitrate = _MPEG_BITRATES_KBPS[(mpeg1, 3)][bitrate_index - 1] * 1000
        rate = _MPEG_RATES[version][rate_index]
        samples = 1152 if mpeg1 else 576
        length = samples // 8 * bitrate // rate + ((header >> 9) & 1)
        if position + length > len(raw):
            return samples
        position += length
        walked += 1
    return 0 if walked else None


def _decode_with_ffmpeg(source: str | bytes, label: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    decoder = _ffmpeg_decoder(source, label)
    metadata = decoder.metadata
    rate = _checked_sample_rate(metadata.sample_rate, label)
    if metadata.duration_seconds_from_header is not None:
        _refuse_if_header_too_long(metadata.duration_seconds_from_header, max_duration_s, label)
    try:
        frames = decoder.get_all_samples().data.T.contiguous().numpy().astype(np.float32, copy=False)
    except RuntimeError as error:
        raise CorruptAudioError(f"{label} is damaged and could not be decoded: {error}") from error
    _check_length(len(frames), rate, max_duration_s, label)
    return frames, rate


def _ffmpeg_decoder(source: str | bytes, label: str) -> Any:
    from torchcodec.decoders import AudioDecoder

    try:
        return AudioDecoder(source)
    except (RuntimeError, ValueError) as error:
        raise CorruptAudioError(f"{label} is not a readable audio file: {error}") from error


def _raise_unreadable(label: str, format_name: str | None) -> NoReturn:
    if format_name is not None:
        raise UnsupportedFormatError(
            f"{label}: {format_name} needs FFmpeg; convert to {'/'.join(SOUNDFILE_FORMATS)} or install ffmpeg "
            "and torchcodec"
        )
    raise CorruptAudioError(
        f"{label} is not a readable audio file (corrupt, truncated, or not audio); "
        f"supported formats: {', '.join(SOUNDFILE_FORMATS)}"
    )


def _format_name(source: Any, head: bytes) -> str | None:
    """Name an FFmpeg-only format from the file extension or the first bytes, else None (not audio)."""
    if isinstance(source, str | os.PathLike):
        extension = Path(source).suffix.lstrip(".").lower()
        if extension in FFMPEG_ONLY_FORMATS:
            return extension
    if head[4:8] == b"ftyp":
        return "m4a/mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"
    return None


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(16)


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioFileNotFoundError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioFileNotFoundError(f"not an audio file (it is a directory or device): {path}")
    return path


def _frames_from_array(array: np.ndarray) -> np.ndarray:
    """[n, channels] float32; integer PCM scaled by its type's range so int16 and float agree."""
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 2:
        if array.shape[0] < array.shape[1]:
            array = array.T
    else:
        raise InvalidAudioSourceError(f"audio array must be 1-D or 2-D (samples x channels), got shape {array.shape}")
    if array.size == 0:
        raise EmptyAudioError(f"the audio array is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise NonFiniteAudioError("the array contains NaN or infinite samples")
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.signedinteger):
        return (array / float(2 ** (8 * array.itemsize - 1))).astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        half = float(2 ** (8 * array.itemsize - 1))
        return ((array - half) / half).astype(np.float32)
    raise InvalidAudioSourceError(f"audio array must hold real numbers, got dtype {array.dtype}")


def _checked_sample_rate(rate: Any, label: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate != int(rate):
        raise InvalidSampleRateError(f"{label}: sample rate must be a whole number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidSampleRateError(
            f"{label}: sample rate {rate} Hz is not valid; expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    return int(rate)


def _refuse_if_header_too_long(header_duration_s: float, max_duration_s: float, label: str) -> None:
    """Refuse a far-too-long file before decoding it into memory; the exact check follows decoding.

    The slack exists because compressed headers only estimate: libsndfile derives an MP3's length
    from its byte size, so ID3 tags and cover art inflate it (6% on one of our example files).
    """
    if header_duration_s > max_duration_s * HEADER_DURATION_SLACK:
        raise AudioTooLongError(
            f"{label} is about {header_duration_s:.1f} s long (from its header), over the limit of "
            f"{max_duration_s:g} s; trim or split it"
        )


def _check_length(n_frames: int, rate: int, max_duration_s: float, label: str) -> None:
    duration_s = n_frames / rate
    if n_frames == 0:
        raise EmptyAudioError(f"{label} holds no audio samples")
    if duration_s < MIN_DURATION_S:
        raise AudioTooShortError(f"{label} is {duration_s:.2f} s long; clips must be at least {MIN_DURATION_S} s")
    if duration_s > max_duration_s:
        raise AudioTooLongError(
            f"{label} is {duration_s:.1f} s long, over the limit of {max_duration_s:g} s; trim or split it"
        )


def _to_mono_16k(frames: np.ndarray, rate: int) -> np.ndarray:
    # One channel is taken as it is: a mean over one value is that value, and it saves a pass over the samples.
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = _resample_to_16k(mono, rate)
    # Resampling can overshoot a full-scale input slightly; the model saw clamped audio only.
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def _resample_to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
    """torchaudio.functional.resample(mono, rate, 16000) with its defaults, bit for bit, in one torch call.

    Why not call it: it rebuilds its sinc kernel from some twenty tensor operations on every call, and each one
    lets go of the GIL and takes it back. A sweep decodes on threads beside the engine's busy Python thread,
    where each taking-back waits up to the interpreter's switch interval (5 ms): measured on this project's
    2-core machine beside a busy thread, 277 ms per 10 s file at 44.1 kHz instead of 1.4 ms alone. Here the
    kernel is built once per rate (`_sinc_kernel`), the padding, block reshaping and cut are numpy's (exact
    copies), and only the convolution, the same call on the same values as torchaudio's, is torch's.
    """
    kernel, width, orig, new = _sinc_kernel(rate)
    padded = np.pad(mono.astype(np.float32, copy=False), (width, width + orig))
    blocks = torch.nn.functional.conv1d(torch.from_numpy(padded.reshape(1, 1, -1)), kernel, stride=orig).numpy()
    samples = math.ceil(new * len(mono) / orig)  # torchaudio's length, computed in the same float arithmetic
    return np.ascontiguousarray(blocks[0].T.reshape(-1)[:samples])


@functools.lru_cache(maxsize=32)
def _sinc_kernel(rate: int) -> tuple[torch.Tensor, int, int, int]:
    """(kernel, width, orig, new) of torchaudio's float32 sinc resampler from `rate` to 16 kHz, built once per rate
    by torchaudio itself (transforms.Resample builds the kernel functional.resample builds for a float32 input)."""
    resampler = torchaudio.transforms.Resample(
        rate, SAMPLE_RATE, lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH, rolloff=RESAMPLE_ROLLOFF, dtype=torch.float32
    )
    orig, new = _reduced_rates(rate)
    return resampler.kernel, resampler.width, orig, new


def _seconds_to_samples(seconds: float, sample_rate: int, name: str) -> int:
    if not (isinstance(seconds, numbers.Real) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    count = round(seconds * sample_rate)
    if count < 1:
        raise ValueError(f"{name}={seconds} s is shorter than one sample at {sample_rate} Hz")
    return count
