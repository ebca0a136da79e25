"""BEATs input features: Kaldi log-mel filter banks, scaled and normalised as BEATs was trained.

BEATs saw int16-range audio (hence * 2**15) and features standardised with AudioSet statistics
divided by *twice* the standard deviation; any other scaling silently shifts every activation.
Features are always computed in float32: the log of tiny mel energies is ill-conditioned in bf16.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torchaudio.compliance import kaldi

from naturelm_core.config import SAMPLE_RATE

NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400
FRAME_SHIFT_SAMPLES = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
WAVEFORM_SCALE = 2**15
PREEMPHASIS = 0.97
FFT_SIZE = 512  # the 400-sample frame rounded up to a power of two
MEL_LOW_HZ = 20.0


def num_frames(num_samples: int) -> int:
    """Frames Kaldi produces with snip_edges: only whole 25 ms frames, every 10 ms."""
    if num_samples < FRAME_LENGTH_SAMPLES:
        return 0
    return 1 + (num_samples - FRAME_LENGTH_SAMPLES) // FRAME_SHIFT_SAMPLES


def raw_fbank(waveforms: Tensor) -> Tensor:
    """Log-mel energies of 16 kHz waveforms [B, S] in [-1, 1] -> float32 [B, frames, 128].

    torchaudio's kaldi.fbank with BEATs' options, computed for the whole batch at once on a GPU: kaldi.fbank
    takes one signal per call and rebuilds its mel banks on the CPU each time (a host-to-device copy per
    row), which made the per-row loop most of the audio encoder's time there (127-192 ms for 176 windows
    against 3.2 ms batched on an H100). On the CPU rows go one at a time, with the banks built once. The
    steps and their order are kaldi.fbank's (snip_edges framing, DC removal, pre-emphasis 0.97, Povey
    window, 512-point power spectrum, mel banks from 20 Hz to Nyquist, log floored at float32 epsilon);
    tests/test_encoder.py holds it to kaldi.fbank row by row.
    """
    if waveforms.ndim != 2:
        raise ValueError(f"expected waveforms of shape [batch, samples], got {tuple(waveforms.shape)}")
    if num_frames(waveforms.shape[1]) == 0:
        raise ValueError(f"need at least {FRAME_LENGTH_SAMPLES} samples for one fbank frame, got {waveforms.shape[1]}")
    scaled = waveforms.to(torch.float32) * WAVEFORM_SCALE
    if scaled.device.type == "cpu":  # row by row, its frames stay in cache: 3x faster than whole at 32 rows (2 cores)
        return torch.cat([_log_mel(row[None]) for row in scaled])
    return _log_mel(scaled)


def _log_mel(scaled: Tensor) -> Tensor:
    frames = scaled.unfold(1, FRAME_LENGTH_SAMPLES, FRAME_SHIFT_SAMPLES)  # [B, frames, 400], snip_edges
    frames = frames - frames.mean(dim=2, keepdim=True)
    previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=2)  # each sample's predecessor, the first its own
    frames = frames - PREEMPHASIS * previous
    window, mel_banks = _fbank_constants(scaled.device)
    frames = nn.functional.pad(frames * window, (0, FFT_SIZE - FRAME_LENGTH_SAMPLES))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    mel_energies = torch.matmul(power, mel_banks.T)
    return torch.clamp_min(mel_energies, torch.finfo(torch.float32).eps).log()


@functools.cache
def _fbank_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """The Povey window [400] and the mel banks [128, 257] on `device`, built once per device."""
    window = torch.hann_window(FRAME_LENGTH_SAMPLES, periodic=False, dtype=torch.float32).pow(0.85)
    banks, _ = kaldi.get_mel_banks(NUM_MEL_BINS, FFT_SIZE, SAMPLE_RATE, MEL_LOW_HZ, 0.0, 100.0, -500.0, 1.0)
    banks = nn.functional.pad(banks, (0, 1))  # no weight on the Nyquist bin, as kaldi.fbank pads it
    return window.to(device), banks.to(device=device, dtype=torch.float32)


def normalise_fbank(fbank: Tensor) -> Tensor:
    """BEATs' fixed standardisation (AudioSet mean, two standard deviations)."""
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


def beats_fbank(waveforms: Tensor) -> Tensor:
    """The features BEATs consumes: float32 [B, frames, 128] from waveforms [B, S]."""
    return normalise_fbank(raw_fbank(waveforms))
