"""The golden target's weight and waveform formula (../shared/reference/golden/README.md), in numpy.

Test support only: it turns the README's words into tensors so the encoder and model tests can
load a formula-defined reduced NatureLM-audio and compare with expected.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "golden"
M = 2147483647
A = 1103515245
B = 1013904223
C = 69084


def golden_available() -> bool:
    return (GOLDEN_DIR / "expected.json").is_file()


def load_expected() -> dict:
    return json.loads((GOLDEN_DIR / "expected.json").read_text())


def name_hash(name: str) -> int:
    h = 0
    for byte in name.encode("utf-8"):
        h = (h * 257 + byte) % M
    return h


def unit_sequence(name: str, count: int) -> np.ndarray:
    """U[k] = sin(2 pi t_k / M) in float64, with t_k computed in exact int64 arithmetic."""
    h = name_hash(name)
    k = np.arange(count, dtype=np.int64)
    t = (A * ((k * k) % M)) % M + ((B + h) % M) * k + (C * h) % M
    t %= M
    return np.sin(2.0 * math.pi * t.astype(np.float64) / M)


def role_of(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(offset, amplitude) by the README's table, first matching rule wins."""
    numel = int(np.prod(shape))
    fan_in = numel / shape[0]
    if name.endswith(".weight_g"):
        return 1.0, 0.5
    if name.endswith(".weight_v"):
        return 0.0, 1.0
    if name.endswith("relative_attention_bias.weight"):
        return 0.0, 1.0
    if name.endswith(".grep_a"):
        return 1.0, 0.2
    if len(shape) == 1 and name.endswith(".weight"):
        return 1.0, 0.1
    if len(shape) == 1 and name.endswith(".bias"):
        return 0.0, 0.1
    if name in ("audio_query_tokens", "model.embed_tokens.weight"):
        return 0.0, 1.0
    if name == "lm_head.weight":
        return 0.0, 8.0 / math.sqrt(fan_in)
    if ".lora_A." in name:
        return 0.0, math.sqrt(2.0) / math.sqrt(fan_in)
    if ".lora_B." in name:
        return 0.0, 1.0 / math.sqrt(fan_in)
    return 0.0, math.sqrt(2.0) / math.sqrt(fan_in)


def formula_tensor(name: str, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if name.endswith("embeddings.position_ids"):
        return np.arange(shape[-1], dtype=np.int64).reshape(shape)
    offset, amplitude = role_of(name, shape)
    values = offset + amplitude * unit_sequence(name, int(np.prod(shape)))
    return values.astype(np.float32).reshape(shape)


def golden_waveforms() -> list[np.ndarray]:
    """w0 (chirp + floor, 10 s), w1 (tones with a 0.2 s gap, 4 s), w2 (loud noise, 12 s)."""
    sr = 16000
    t0 = np.arange(160000, dtype=np.float64) / sr
    w0 = 0.3 * np.sin(2 * math.pi * (400 + 300 * t0) * t0) + 0.03 * unit_sequence("waveform.chirp.floor", 160000)
    t1 = np.arange(64000, dtype=np.float64) / sr
    w1 = (
        0.4 * np.sin(2 * math.pi * 500 * t1)
        + 0.3 * np.sin(2 * math.pi * 1250 * t1)
        + 0.03 * unit_sequence("waveform.tones.floor", 64000)
    )
    w1[32000:35200] = 0.0
    w2 = 1.25 * unit_sequence("waveform.noise", 192000)
    return [w.astype(np.float32) for w in (w0, w1, w2)]


def upstream_preprocess(waveform: np.ndarray) -> np.ndarray:
    """Upstream's processor: first 10 s, right-pad with zeros to 10 s, then clamp to [-1, 1]."""
    out = np.zeros(160000, dtype=np.float32)
    kept = waveform[:160000]
    out[: len(kept)] = kept
    return np.clip(out, -1.0, 1.0)
