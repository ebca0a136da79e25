"""The 16 kHz resampler: torchaudio's, bit for bit, with its kernel built once per rate and one torch call per use.

Why it matters: sweeps decode on threads beside the engine's Python thread, and every torch call lets go of the
GIL and must take it back, waiting up to the interpreter's switch interval while the engine runs Python.
torchaudio.functional.resample rebuilds its kernel from about twenty tensor operations on every call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional
from torch.overrides import TorchFunctionMode

from naturelm_core import audio
from naturelm_core.config import SAMPLE_RATE

RATES = [1_000, 8_000, 11_025, 12_345, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000, 768_000]


def torchaudio_resample(mono: np.ndarray, rate: int) -> np.ndarray:
    resampled = torchaudio.functional.resample(torch.from_numpy(mono), rate, SAMPLE_RATE)
    return resampled.numpy()


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("frames", [1, 7, 441, 5_000, 20_000, 40_000, 110_250])
def test_it_is_torchaudios_resample_bit_for_bit(rate, frames):
    """Lengths either side of 20,480 frames, where PyTorch's CPU convolution changes its summation order."""
    mono = np.random.default_rng(frames + rate).uniform(-1, 1, frames).astype(np.float32)
    ours, theirs = audio._resample_to_16k(mono, rate), torchaudio_resample(mono, rate)
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, theirs)


def test_load_audio_of_a_stereo_44k1_array_is_the_torchaudio_mixdown_resampled_and_clamped():
    frames = np.random.default_rng(0).uniform(-1, 1, (44_100, 2)).astype(np.float32)
    waveform, _ = audio.load_audio(frames, sample_rate=44_100)
    expected = np.clip(torchaudio_resample(frames.mean(axis=1, dtype=np.float32), 44_100), -1.0, 1.0)
    np.testing.assert_array_equal(waveform, expected)


def test_a_mono_recording_is_not_averaged_over_its_one_channel_but_comes_out_the_same():
    mono = np.random.default_rng(1).uniform(-1, 1, (48_000, 1)).astype(np.float32)
    waveform, _ = audio.load_audio(mono, sample_rate=48_000)
    np.testing.assert_array_equal(waveform, np.clip(torchaudio_resample(mono[:, 0], 48_000), -1.0, 1.0))


class CountTorchCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_after_the_first_file_at_a_rate_a_resample_makes_one_torch_call_where_torchaudio_makes_many():
    mono = np.random.default_rng(2).uniform(-1, 1, 44_100).astype(np.float32)
    audio._resample_to_16k(mono, 44_100)  # builds the 44.1 kHz kernel, once per process
    with CountTorchCalls() as ours:
        audio._resample_to_16k(mono, 44_100)
    with CountTorchCalls() as theirs:
        torchaudio_resample(mono, 44_100)
    assert [name for name in ours.calls if name != "numpy"] == ["conv1d"]
    assert len(theirs.calls) >= 10  # the baseline this saves: a kernel built from tensor operations per call


def test_the_kernel_is_built_once_per_rate(monkeypatch):
    audio._sinc_kernel.cache_clear()
    built = []
    real = torchaudio.transforms.Resample

    def counting(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(audio.torchaudio.transforms, "Resample", counting)
    mono = np.zeros(16_000, dtype=np.float32)
    for rate in (44_100, 48_000, 44_100, 48_000, 44_100):
        audio._resample_to_16k(mono, rate)
    assert built == [44_100, 48_000]
    audio._sinc_kernel.cache_clear()  # no counting kernel factory's products outlive the test
