"""Our audio encoder, loaded with the golden formula's weights, reproduces what upstream NatureLM computes.

This is the numerical proof that the encoder is NatureLM-audio's: fbank, every BEATs stage, ln_audio,
the Q-Former and the audio embeddings of the three golden waveforms are compared with expected.json
(../shared/reference/golden), within the README's float32 tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naturelm_core.encoder import AudioEncoder
from naturelm_core.fbank import normalise_fbank, raw_fbank
from tests.golden_formula import golden_available, golden_waveforms, load_expected, upstream_preprocess
from tests.golden_model import GOLDEN_LLM_HIDDEN_SIZE, golden_audio_state_dict, golden_config

pytestmark = [
    pytest.mark.skipif(not golden_available(), reason="../shared/reference/golden is not present"),
    pytest.mark.slow,
]

# expected.json key -> the module whose output it records, for [1, 496, 768] BEATs-side probes.
TOKEN_PROBES = {
    "beats_input": "beats.post_extract_proj",
    "beats_after_pos_conv": "beats.encoder.layer_norm",
    "beats_layer0": "beats.encoder.layers.0",
    "beats_output": "beats",
    "ln_audio": "ln_audio",
}
WAVEFORMS = [0, 1, 2]


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_expected()


@pytest.fixture(scope="module")
def golden_run() -> dict[str, torch.Tensor]:
    """Run the three preprocessed waveforms as one float32 batch, recording each probe by forward hooks."""
    config = golden_config()
    encoder = AudioEncoder(config, GOLDEN_LLM_HIDDEN_SIZE).eval()
    encoder.load_state_dict(golden_audio_state_dict(config), strict=True)
    modules = dict(encoder.named_modules())
    recorded: dict[str, torch.Tensor] = {}
    for key, module_name in {**TOKEN_PROBES, "qformer_output": "audio_Qformer"}.items():
        modules[module_name].register_forward_hook(lambda _m, _i, output, key=key: recorded.__setitem__(key, output))
    waveforms = torch.from_numpy(np.stack([upstream_preprocess(w) for w in golden_waveforms()]))
    with torch.no_grad():
        recorded["audio_embeddings"] = encoder(waveforms)
    recorded["raw_fbank"] = raw_fbank(waveforms)
    num_windows = recorded["audio_embeddings"].shape[1]
    recorded["qformer_output"] = recorded["qformer_output"].reshape(len(waveforms), num_windows, 1, -1)
    return recorded


def assert_stats(values: torch.Tensor, stats: dict, atol: float) -> None:
    """Mean, population std and abs max over all elements, as expected.json records them."""
    values = values.double()
    measured = [values.mean().item(), values.std(correction=0).item(), values.abs().max().item()]
    np.testing.assert_allclose(measured, [stats["mean"], stats["std"], stats["abs_max"]], rtol=0, atol=atol)


def assert_values(values: torch.Tensor, recorded: list[float], atol: float) -> None:
    np.testing.assert_allclose(values.numpy(), np.asarray(recorded, dtype=np.float32), rtol=0, atol=atol)


@pytest.mark.parametrize("index", WAVEFORMS)
def test_fbank(golden_run, expected, index):
    recorded = expected["waveforms"][index]["fbank"]
    tolerance = expected["tolerances"]
    raw = golden_run["raw_fbank"][index]
    normalised = normalise_fbank(raw)
    assert list(raw.shape) == recorded["shape"]
    assert_values(raw[0, :8], recorded["raw_frame0_first8"], tolerance["fbank_raw_atol"])
    assert_values(raw[500, :8], recorded["raw_frame500_first8"], tolerance["fbank_raw_atol"])
    assert_values(normalised[0, :8], recorded["frame0_first8"], tolerance["fbank_normalised_atol"])
    assert_values(normalised[500, :8], recorded["frame500_first8"], tolerance["fbank_normalised_atol"])
    assert_stats(normalised, recorded, tolerance["fbank_normalised_atol"])


@pytest.mark.parametrize("probe", TOKEN_PROBES)
@pytest.mark.parametrize("index", WAVEFORMS)
def test_beats_and_ln_audio(golden_run, expected, index, probe):
    recorded = expected["waveforms"][index][probe]
    atol = expected["tolerances"]["beats_ln_audio_qformer_atol"]
    tokens = golden_run[probe][index]
    assert [1, *tokens.shape] == recorded["shape"]
    assert_stats(tokens, recorded, atol)
    assert_values(tokens[0, :8], recorded["token0_first8"], atol)
    if "token250_first8" in recorded:
        assert_values(tokens[250, :8], recorded["token250_first8"], atol)


@pytest.mark.parametrize("index", WAVEFORMS)
def test_qformer_output(golden_run, expected, index):
    recorded = expected["waveforms"][index]["qformer_output"]
    atol = expected["tolerances"]["beats_ln_audio_qformer_atol"]
    windows = golden_run["qformer_output"][index]  # [29, 1, 768]
    assert list(windows.shape) == recorded["shape"]
    assert_stats(windows, recorded, atol)
    assert_values(windows[0, 0, :8], recorded["window0_first8"], atol)
    assert_values(windows[28, 0, :8], recorded["window28_first8"], atol)


@pytest.mark.parametrize("index", WAVEFORMS)
def test_audio_embeddings(golden_run, expected, index):
    recorded = expected["waveforms"][index]["audio_embeddings"]
    atol = expected["tolerances"]["audio_embeddings_atol"]
    embeddings = golden_run["audio_embeddings"][index]  # [29, 64]
    assert [1, *embeddings.shape] == recorded["shape"]
    assert_stats(embeddings, recorded, atol)
    assert_values(embeddings[0, :8], recorded["row0_first8"], atol)
    assert_values(embeddings[28, :8], recorded["row28_first8"], atol)
    if index == 0:  # expected.json records all 29 x 64 values for waveform 0 only
        assert_values(embeddings, recorded["full"], atol)
