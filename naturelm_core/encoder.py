"""NatureLM-audio's audio stack: waveform windows -> embeddings in the LLM's input space.

waveform -> fbank -> BEATs -> ln_audio -> windows of BEATs tokens -> Q-Former (learned queries per
window) -> audio_llama_proj. The attribute names are the published checkpoint's top-level names.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from naturelm_core.beats import BEATs
from naturelm_core.config import NatureLMConfig
from naturelm_core.fbank import FRAME_LENGTH_SAMPLES, FRAME_SHIFT_SAMPLES, NUM_MEL_BINS, beats_fbank, num_frames
from naturelm_core.qformer import QFormer


class AudioTooShortError(ValueError):
    """A window too short to fill one Q-Former window of BEATs tokens."""


def audio_token_count(num_samples: int, config: NatureLMConfig) -> int:
    """How many audio embeddings a window of `num_samples` 16 kHz samples becomes (0 if too short).

    frames      = 1 + (S - 400) // 160        (25 ms Kaldi frames every 10 ms, whole frames only)
    time_patches = frames // 16               (BEATs 16x16 patches; trailing frames are dropped)
    tokens      = time_patches * (128 // 16)  (8 mel patches per time patch, time-major)
    windows     = (tokens - 17) // 17 + 1     (window and stride from the config; remainder dropped)
    embeddings  = windows * num_audio_query_token (1 as published)

    For 10 s: 998 frames -> 62 time patches -> 496 tokens -> 29 windows -> 29 embeddings.
    """
    patch = config.beats_cfg.input_patch_size
    tokens = (num_frames(num_samples) // patch) * (NUM_MEL_BINS // patch)
    window, stride = config.qformer_window_tokens, config.qformer_window_stride
    if tokens < window:
        return 0
    return ((tokens - window) // stride + 1) * config.num_audio_query_token


def min_num_samples(config: NatureLMConfig) -> int:
    """The fewest samples that give one embedding (7920, i.e. 0.495 s, as published)."""
    patch = config.beats_cfg.input_patch_size
    time_patches = math.ceil(config.qformer_window_tokens / (NUM_MEL_BINS // patch))
    return FRAME_LENGTH_SAMPLES + (time_patches * patch - 1) * FRAME_SHIFT_SAMPLES


class AudioEncoder(nn.Module):
    """Waveform windows [B, S] (16 kHz, in [-1, 1]) -> audio embeddings [B, audio_token_count(S), llm_hidden]."""

    def __init__(self, config: NatureLMConfig, llm_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        beats_dim = config.beats_cfg.encoder_embed_dim
        qformer_dim = config.qformer_hidden_size
        self.beats = BEATs(config.beats_cfg)
        self.ln_audio = nn.LayerNorm(beats_dim)
        self.audio_Qformer = QFormer(config)
        self.audio_query_tokens = nn.Parameter(torch.empty(1, config.num_audio_query_token, qformer_dim))
        nn.init.normal_(self.audio_query_tokens, std=0.02)
        self.audio_llama_proj = nn.Linear(qformer_dim, llm_hidden_size)

    def forward(self, windows: Tensor) -> Tensor:
        if windows.ndim != 2 or not windows.is_floating_point():
            shape = tuple(windows.shape)
            raise ValueError(
                f"expected a float tensor of waveform windows [batch, samples], got {windows.dtype} {shape}"
            )
        if audio_token_count(windows.shape[1], self.config) == 0:
            raise AudioTooShortError(
                f"a window of {windows.shape[1]} samples is too short for the audio encoder; "
                f"it needs at least {min_num_samples(self.config)} samples at 16 kHz"
            )
        weight = self.audio_llama_proj.weight
        with torch.autocast(weight.device.type, enabled=False):  # fbank in float32, even inside a bf16 autocast
            features = beats_fbank(windows.to(weight.device))
        features = features.to(weight.dtype)
        audio_tokens = self.ln_audio(self.beats(features))
        batch, _, beats_dim = audio_tokens.shape
        # Windows slide over the time-major token sequence (they do not align with time patches).
        window, stride = self.config.qformer_window_tokens, self.config.qformer_window_stride
        token_windows = audio_tokens.unfold(1, window, stride)  # [B, n_windows, beats_dim, window]
        token_windows = token_windows.transpose(2, 3).reshape(-1, window, beats_dim)
        queries = self.audio_query_tokens.expand(token_windows.shape[0], -1, -1)
        query_outputs = self.audio_Qformer(queries, token_windows)  # [B * n_windows, n_queries, qformer_dim]
        return self.audio_llama_proj(query_outputs).reshape(batch, -1, self.audio_llama_proj.out_features)
