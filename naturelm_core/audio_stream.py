"""Hours-long recordings, window by window: what `windows(load_audio(path))` gives, in bounded memory.

`load_audio` decodes a whole file and refuses anything over MAX_DURATION_S (600 s); a field
recording of two hours at 48 kHz would be 1.4 GB of float32 before resampling. Here a file is read
sequentially with soundfile (no seeking, which libsndfile's MP3 reader does only approximately),
down-mixed per block as `load_audio` down-mixes, and resampled to 16 kHz in pieces: for each window,
the part the previous window did not already cover, from the source samples it needs plus
RESAMPLE_MARGIN_S either side. About one window of source audio and one of 16 kHz audio are held
at a time, and every 16 kHz sample is computed once, whatever the hop.

Exactness: the resampler (`load_audio`'s own: torchaudio's sinc kernel, built once per sample
rate) reaches about six output samples either side (about 100 when upsampling from 1 kHz); the
margin is 1600. Each piece starts on a source sample where the resampler's phase pattern restarts,
so every output sample comes from the same source samples and filter taps as in whole-file
resampling; only the floating-point summation inside the convolution may differ. Where a piece
touches the file's start or end, whole-file resampling sees the same zero padding.
tests/test_audio_stream.py checks agreement with `windows(load_audio(path))` to 1e-6 (measured:
at most 2.4e-7, and 0 at 44.1 and 48 kHz).

One difference in policy: a file that cannot be decoded past some point is analysed up to there,
with a warning, where `load_audio` refuses it; losing hours of recording to a damaged tail helps
no one. Formats: what soundfile reads (wav, flac, ogg, mp3). Others (m4a, ...) and numpy arrays
are cut from memory within `load_audio`'s limits, since FFmpeg decoding here is whole-file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from naturelm_core.audio import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    SOUNDFILE_FORMATS,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    NonFiniteAudioError,
    Window,
    _checked_sample_rate,
    _declared_frames,
    _existing_file,
    _reduced_rates,
    _refuse_if_header_too_long,
    _resample_to_16k,
    _seconds_to_samples,
    _truncation_warning,
    iter_windows,
    load_audio,
    window_count,
)
from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS

MAX_STREAM_DURATION_S = 24 * 3600.0
RESAMPLE_MARGIN_S = 0.1
# Source frames per soundfile read: bounds the multi-channel block held before down-mixing
# (64 Ki frames x 8 channels of float32 is 2 MiB).
READ_BLOCK_FRAMES = 1 << 16

StreamSource = str | os.PathLike | np.ndarray


class WindowStream:
    """The windows of one recording, made one at a time as the caller iterates (once, inside `with`).

    `samples` (the length at 16 kHz), `duration_s` and `window_count` come from the header until the
    end of the audio has been read (exact for WAV and FLAC, an estimate for MP3 and OGG), then are
    exact. `warnings` gains a sentence when a file turns out truncated or damaged part-way; `peak` is
    the loudest sample read; `max_buffer_bytes` is the largest source buffer held, what bounds memory.
    """

    def __init__(
        self,
        label: str,
        samples: int,
        window_len: int,
        hop_len: int,
        make_windows: Callable[[WindowStream], Iterator[Window]],
        sound_file: sf.SoundFile | None = None,
    ) -> None:
        self.label = label
        self.samples = samples
        self.window_len = window_len
        self.hop_len = hop_len
        self.warnings: list[str] = []
        self.peak = 0.0
        self.max_buffer_bytes = 0
        self._sound_file = sound_file
        self._windows = make_windows(self)

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def window_count(self) -> int:
        return window_count(self.samples, self.window_len, self.hop_len)

    def __iter__(self) -> Iterator[Window]:
        return self._windows

    def close(self) -> None:
        if self._sound_file is not None:
            self._sound_file.close()

    def __enter__(self) -> WindowStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def open_windows(
    source: StreamSource,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
    max_duration_s: float = MAX_STREAM_DURATION_S,
) -> WindowStream:
    """A recording's windows as `windows()` cuts them, read lazily from a file (or from a 16 kHz mono array).

    The cheap checks (file exists, readable header, sample rate, duration from the header) run here,
    before any audio is decoded, so a caller can refuse bad input at once.
    """
    window_len = _seconds_to_samples(window_s, SAMPLE_RATE, "window_s")
    hop_len = _seconds_to_samples(hop_s, SAMPLE_RATE, "hop_s")
    if isinstance(source, np.ndarray):
        waveform, _ = load_audio(source, sample_rate=SAMPLE_RATE, max_duration_s=max_duration_s)
        return _in_memory(waveform, "the audio array", window_len, hop_len)
    path = _existing_file(source)
    label = f"'{path.name}'"
    try:
        sound_file = sf.SoundFile(str(path))
    except sf.SoundFileError:
        return _decoded_whole(path, label, max_duration_s, window_len, hop_len)
    try:
        rate = _checked_sample_rate(sound_file.samplerate, label)
        _refuse_if_header_too_long(sound_file.frames / rate, max_duration_s, label)
    except Exception:
        sound_file.close()
        raise
    samples = _resampled_length(sound_file.frames, rate)
    return WindowStream(
        label,
        samples,
        window_len,
        hop_len,
        lambda stream: _stream(stream, sound_file, str(path), _SourceReader(stream, sound_file, max_duration_s)),
        sound_file,
    )


def _in_memory(waveform: np.ndarray, label: str, window_len: int, hop_len: int) -> WindowStream:
    window_s, hop_s = window_len / SAMPLE_RATE, hop_len / SAMPLE_RATE
    stream = WindowStream(label, waveform.size, window_len, hop_len, lambda _: iter_windows(waveform, window_s, hop_s))
    stream.peak = float(np.abs(waveform).max())
    return stream


def _decoded_whole(path: Path, label: str, max_duration_s: float, window_len: int, hop_len: int) -> WindowStream:
    """Formats soundfile cannot open go through `load_audio` (FFmpeg, or its clear refusal), whole."""
    try:
        waveform, _ = load_audio(path, max_duration_s=min(max_duration_s, MAX_DURATION_S))
    except AudioTooLongError as error:
        if max_duration_s <= MAX_DURATION_S:
            raise
        raise AudioTooLongError(
            f"{error}; only {'/'.join(SOUNDFILE_FORMATS)} files are streamed, so convert it (e.g. to FLAC) to "
            f"analyse up to {MAX_STREAM_DURATION_S / 3600:g} h"
        ) from error
    return _in_memory(waveform, label, window_len, hop_len)


class _SourceReader:
    """The file's frames in order, down-mixed to mono, keeping only those a later window still needs."""

    def __init__(self, stream: WindowStream, sound_file: sf.SoundFile, max_duration_s: float) -> None:
        self.stream = stream
        self.sound_file = sound_file
        self.max_frames = int(max_duration_s * sound_file.samplerate)
        self.buffer = np.zeros(0, dtype=np.float32)
        self.start = 0  # source index of buffer[0]
        self.at_end = False

    @property
    def end(self) -> int:
        return self.start + self.buffer.size

    def fill(self, until: int) -> None:
        """Read until the buffer reaches source frame `until` or the audio ends."""
        blocks = [self.buffer]
        read_to = self.end
        while read_to < until and not self.at_end:
            block = self._read(min(READ_BLOCK_FRAMES, until - read_to), read_to)
            if block is None:
                self.at_end = True
                break
            blocks.append(block.mean(axis=1, dtype=np.float32))  # as load_audio down-mixes
            read_to += len(block)
            if read_to > self.max_frames:
                rate = self.sound_file.samplerate
                raise AudioTooLongError(
                    f"{self.stream.label} is over {self.max_frames / rate:g} s long, the limit for one recording; "
                    "split it"
                )
        if len(blocks) > 1:
            self.buffer = np.concatenate(blocks)
            self.stream.max_buffer_bytes = max(self.stream.max_buffer_bytes, self.buffer.nbytes)

    def drop_before(self, index: int) -> None:
        """Forget frames before `index`; every later window starts at or after it."""
        if index > self.start:
            self.buffer = self.buffer[index - self.start :]
            self.start = index

    def _read(self, frames: int, position: int) -> np.ndarray | None:
        """The next block (frames x channels), or None at the end; damage part-way ends the audio there."""
        rate = self.sound_file.samplerate
        try:
            block = self.sound_file.read(frames, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as error:
            if position == 0:
                raise CorruptAudioError(f"{self.stream.label} is damaged and could not be decoded: {error}") from error
            self.stream.warnings.append(
                f"{self.stream.label} could not be decoded after {position / rate:.1f} s ({error}); "
                "only the audio before that point is analysed"
            )
            return None
        if len(block) == 0:
            return None
        if not np.isfinite(block).all():
            raise NonFiniteAudioError(
                f"{self.stream.label} contains NaN or infinite samples (after {position / rate:.1f} s)"
            )
        self.stream.peak = max(self.stream.peak, float(np.abs(block).max()))
        return block


def _stream(stream: WindowStream, sound_file: sf.SoundFile, path: str, reader: _SourceReader) -> Iterator[Window]:
    """Each window, from 16 kHz audio made once per sample: what the previous window did not already cover
    is resampled from the source samples it needs plus the margin the module docstring explains."""
    rate = sound_file.samplerate
    step = _reduced_rates(rate)[1]  # output samples per restart of the resampler's phases
    resampled = rate != SAMPLE_RATE
    margin = round(RESAMPLE_MARGIN_S * SAMPLE_RATE) if resampled else 0
    window_len, hop_len = stream.window_len, stream.hop_len
    reach = max(window_len, hop_len)

    def source_index(output_index: int) -> int:
        return output_index * rate // SAMPLE_RATE  # exact where output_index is a multiple of `step`

    def down(index: int) -> int:
        return max(0, index // step * step)

    def up(index: int) -> int:
        return -(-index // step) * step

    start = 0  # the window's first sample at 16 kHz
    made = np.zeros(0, dtype=np.float32)  # 16 kHz audio from `start` on, kept from the previous window
    finished = False
    while True:
        # One frame past the reach: a file that ends exactly there must be seen to end, or a next window is made.
        reader.fill(source_index(up(start + reach + margin)) + 1)
        if reader.at_end and not finished:
            _finish(stream, sound_file, path, reader.end)
            finished = True
        end = min(start + window_len, stream.samples) if finished else start + window_len
        if start + made.size < end:
            first = down(start + made.size - margin)
            chunk = reader.buffer[source_index(first) - reader.start : source_index(up(end + margin)) - reader.start]
            if resampled:
                chunk = _resample_to_16k(chunk, rate)
            made = np.concatenate([made, np.clip(chunk[start + made.size - first : end - first], -1.0, 1.0)])
        samples = np.zeros(window_len, dtype=np.float32)
        samples[: made.size] = made
        yield Window(start / SAMPLE_RATE, end / SAMPLE_RATE, samples)
        if finished and stream.samples <= start + reach:
            return
        reader.drop_before(source_index(down(end - margin)))
        made = made[hop_len:]
        start += hop_len


def _finish(stream: WindowStream, sound_file: sf.SoundFile, path: str, frames: int) -> None:
    """The end of the audio is known: the exact length, the length checks, a truncation warning."""
    rate = sound_file.samplerate
    if frames == 0:
        raise EmptyAudioError(f"{stream.label} holds no audio samples")
    if frames / rate < MIN_DURATION_S:
        raise AudioTooShortError(
            f"{stream.label} is {frames / rate:.2f} s long; clips must be at least {MIN_DURATION_S} s"
        )
    if sound_file.format != "MP3" and not stream.warnings:  # load_audio's MP3 check reads the whole file
        warning = _truncation_warning(sound_file, path, stream.label, frames, _declared_frames(sound_file, path), rate)
        if warning:
            stream.warnings.append(warning)
    stream.samples = _resampled_length(frames, rate)


def _resampled_length(frames: int, rate: int) -> int:
    """Samples at 16 kHz that `frames` at `rate` resample to (torchaudio's ceiling)."""
    return -(-frames * SAMPLE_RATE // rate)
