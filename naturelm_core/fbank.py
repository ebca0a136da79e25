"""BEATs input features: Kaldi log-mel filter banks, scaled and normalised as BEATs was trained.

BEATs saw int16-range audio (hence * 2**15) and features standardised with AudioSet statistics
divided by *twice* the standard deviation; any other scaling silently shifts every activation.
Features are always computed in float32: the log of tiny mel energies is ill-conditioned in bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor
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


def num_frames(num_samples: int) -> int:
    """Frames Kaldi produces with snip_edges: only whole 25 ms frames, every 10 ms."""
    if num_samples < FRAME_LENGTH_SAMPLES:
        return 0
    return 1 + (num_samples - FRAME_LENGTH_SAMPLES) // FRAME_SHIFT_SAMPLES


def raw_fbank(waveforms: Tensor) -> Tensor:
    """Log-mel energies of 16 kHz waveforms [B, S] in [-1, 1] -> float32 [B, frames, 128].

    kaldi.fbank handles one signal at a time, so rows are processed one by one.
    """
    if waveforms.ndim != 2:
        raise ValueError(f"expected waveforms of shape [batch, samples], got {tuple(waveforms.shape)}")
    if num_frames(waveforms.shape[1]) == 0:
        raise ValueError(f"need at least {FRAME_LENGTH_SAMPLES} samples for one fbank frame, got {waveforms.shape[1]}")
    scaled = waveforms.to(torch.float32) * WAVEFORM_SCALE
    rows = [
        kaldi.fbank(
            row.unsqueeze(0),
            num_mel_bins=NUM_MEL_BINS,
            sample_frequency=SAMPLE_RATE,
            frame_length=FRAME_LENGTH_MS,
            frame_shift=FRAME_SHIFT_MS,
        )
        for row in scaled
    ]
    return torch.stack(rows)


def normalise_fbank(fbank: Tensor) -> Tensor:
    """BEATs' fixed standardisation (AudioSet mean, two standard deviations)."""
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


def beats_fbank(waveforms: Tensor) -> Tensor:
    """The features BEATs consumes: float32 [B, frames, 128] from waveforms [B, S]."""
    return normalise_fbank(raw_fbank(waveforms))
