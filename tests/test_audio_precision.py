"""The audio encoder's precision: float32 beside a float32 LLM (what the golden target records), bf16
autocast beside a bf16 LLM (what upstream's encode_audio does), and an explicit override either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import naturelm_core.encoder as encoder_module
from naturelm_core.encoder import AudioEncoder
from naturelm_core.loading import load_model
from naturelm_core.startup import load_served_model
from tests.golden_formula import golden_available
from tests.golden_model import GOLDEN_LLM_HIDDEN_SIZE, golden_audio_state_dict, golden_config


def _windows(count: int = 2) -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((count, 160_000)) * 0.1).astype(np.float32)


def test_a_float32_llm_encodes_in_float32_by_default(tiny_model):
    assert tiny_model.audio_precision == "float32"
    windows = _windows()
    with torch.no_grad():
        expected = tiny_model.audio_encoder(torch.as_tensor(windows))
    assert torch.equal(tiny_model.encode_audio(windows), expected)


def test_bfloat16_precision_runs_the_encoder_under_bf16_autocast(tiny_model):
    windows = _windows()
    reference = tiny_model.encode_audio(windows)
    tiny_model.audio_precision = "bfloat16"
    try:
        rounded = tiny_model.encode_audio(windows)
    finally:
        tiny_model.audio_precision = None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = tiny_model.audio_encoder(torch.as_tensor(windows)).float()
    assert rounded.dtype == reference.dtype == torch.float32  # handed to the LLM in its dtype
    assert torch.equal(rounded, expected)
    assert not torch.equal(rounded, reference)  # the products did run in bf16


@pytest.mark.skipif(not golden_available(), reason="../shared/reference/golden is not present")
def test_bf16_autocast_stays_within_bf16_rounding_of_float32_on_the_golden_weights():
    """The golden target's formula weights (a realistic scale, unlike the tiny model's random ones, whose
    deep-norm stack amplifies any rounding): bf16 autocast within 2% of float32 at every stage."""
    config = golden_config()
    encoder = AudioEncoder(config, GOLDEN_LLM_HIDDEN_SIZE)
    encoder.load_state_dict(golden_audio_state_dict(config))
    encoder.eval()
    windows = torch.as_tensor(_windows())
    outputs = []
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs.append(encoder(windows).float())
    reference, rounded = outputs
    assert 0 < float((rounded - reference).norm() / reference.norm()) < 2e-2


def test_the_fbank_stays_float32_inside_the_autocast(tiny_model, monkeypatch):
    seen: list[tuple[bool, torch.dtype]] = []
    original = encoder_module.beats_fbank

    def spy(waveforms: torch.Tensor) -> torch.Tensor:
        features = original(waveforms)
        seen.append((torch.is_autocast_enabled("cpu"), features.dtype))
        return features

    monkeypatch.setattr(encoder_module, "beats_fbank", spy)
    tiny_model.audio_precision = "bfloat16"
    try:
        tiny_model.encode_audio(_windows(1))
    finally:
        tiny_model.audio_precision = None
    assert seen == [(False, torch.float32)]


def test_the_default_follows_the_llm_and_the_loader_overrides_it(tiny_checkpoint):
    assert load_model(tiny_checkpoint, device="cpu", dtype="bfloat16").audio_precision == "bfloat16"
    served = load_served_model(str(tiny_checkpoint), device="cpu", dtype="bfloat16", audio_precision="float32")
    assert served.model.audio_precision == "float32"


def test_an_unknown_precision_is_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match="float16"):
        tiny_model.audio_precision = "float16"
    assert tiny_model.audio_precision == "float32"


def test_ray_actors_load_the_model_with_the_same_audio_precision(tiny_checkpoint):
    from evaluation.sweep.ray_backend import ModelSource

    source = ModelSource(str(tiny_checkpoint), device="cpu", dtype="bfloat16", audio_precision="float32")
    assert source.load().audio_precision == "float32"


def test_the_page_header_names_the_audio_encoders_precision(tiny_checkpoint):
    served = load_served_model(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    assert served.header.endswith("cpu · bfloat16 · audio encoder bfloat16")
    served.model.audio_precision = "float32"
    assert served.header.endswith("· audio encoder float32")
