"""The audio encoder: published parameter names, Kaldi features, output lengths, batching, dtypes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchaudio.compliance import kaldi

from naturelm_core.beats import WeightNormConv1d, relative_position_buckets
from naturelm_core.config import NatureLMConfig
from naturelm_core.encoder import AudioEncoder, AudioTooShortError, audio_token_count, min_num_samples
from naturelm_core.fbank import beats_fbank, raw_fbank

AUDIO_PREFIXES = ("beats.", "ln_audio.", "audio_Qformer.", "audio_query_tokens", "audio_llama_proj.")
TEN_SECONDS = 160_000
TINY_LLM_HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_encoder() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(NatureLMConfig.tiny(), TINY_LLM_HIDDEN).eval()


def _noise(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, num_samples, generator=generator)


def test_full_size_state_dict_matches_published_manifest(shared_dir):
    manifest = json.loads((shared_dir / "reference" / "naturelm_state_dict_manifest.json").read_text())
    expected = {
        entry["name"]: (tuple(entry["shape"]), entry["dtype"])
        for entry in manifest["entries"]
        if entry["name"].startswith(AUDIO_PREFIXES)
    }
    with torch.device("meta"):
        encoder = AudioEncoder(NatureLMConfig.full(), 4096)
    ours = {
        name: (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        for name, tensor in encoder.state_dict().items()
    }
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {name: ours[name] for name in expected if ours[name] != expected[name]} == {}


def test_relative_position_table_is_one_tensor_shared_by_all_layers():
    with torch.device("meta"):
        encoder = AudioEncoder(NatureLMConfig.full(), 4096)
    layers = encoder.beats.encoder.layers
    assert len(layers) == 12
    assert all(
        layer.self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias for layer in layers
    )
    table_params = [name for name, _ in encoder.named_parameters() if "relative_attention_bias" in name]
    assert table_params == ["beats.encoder.layers.0.self_attn.relative_attention_bias.weight"]


def test_fbank_equals_torchaudio_kaldi_fbank_with_beats_options():
    """The batched fbank, row by row against kaldi.fbank (one call per row), to the bit: with a silent
    stretch and an all-zero row (the log's epsilon floor) in the same batch as ordinary noise."""
    waveforms = _noise(4, 16_000 + 123)
    waveforms[1, 4000:8000] = 0.0
    waveforms[2] = 0.0
    expected = torch.stack(
        [
            kaldi.fbank(
                row.unsqueeze(0) * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10
            )
            for row in waveforms
        ]
    )
    assert expected.shape == (4, 1 + (16_123 - 400) // 160, 128)
    torch.testing.assert_close(raw_fbank(waveforms), expected, rtol=0, atol=0)
    torch.testing.assert_close(beats_fbank(waveforms), (expected - 15.41663) / (2 * 6.55582), rtol=0, atol=0)


def test_fbank_is_float32_whatever_the_input_dtype():
    waveforms = _noise(1, 8000)
    features = beats_fbank(waveforms.to(torch.bfloat16))
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, beats_fbank(waveforms.to(torch.bfloat16).float()))


def test_weight_norm_is_per_kernel_tap_like_torch_weight_norm_along_dim_2():
    conv = WeightNormConv1d(channels=8, kernel_size=6, groups=2)
    with torch.no_grad():
        conv.weight_g.uniform_(0.5, 1.5)
    reference = torch.nn.Conv1d(8, 8, kernel_size=6, groups=2)
    reference = torch.nn.utils.parametrizations.weight_norm(reference, dim=2)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(conv.weight_g)
        reference.parametrizations.weight.original1.copy_(conv.weight_v)
    torch.testing.assert_close(conv.weight(), reference.weight)


def test_relative_position_buckets_follow_the_published_formula():
    def bucket(offset: int) -> int:
        base = 160 if offset > 0 else 0
        distance = abs(offset)
        if distance < 80:
            return base + distance
        return base + min(159, 80 + math.floor(math.log(distance / 80) / math.log(10) * 80))

    length = 496
    buckets = relative_position_buckets(length, num_buckets=320, max_distance=800, device=torch.device("cpu"))
    offsets = range(-(length - 1), length)
    expected = {offset: bucket(offset) for offset in offsets}
    ours = {j - i: int(buckets[i, j]) for i in (0, length - 1) for j in range(length)}
    assert ours == expected


def test_ten_seconds_give_29_embeddings(tiny_encoder):
    assert audio_token_count(TEN_SECONDS, NatureLMConfig.full()) == 29
    with torch.no_grad():
        embeddings = tiny_encoder(_noise(1, TEN_SECONDS))
    assert embeddings.shape == (1, 29, TINY_LLM_HIDDEN)


@pytest.mark.parametrize("num_samples", [7920, 8000, 16_000, 24_000, 48_000, 80_000, 123_457, 192_000])
def test_length_formula_matches_the_encoder_output(tiny_encoder, num_samples):
    with torch.no_grad():
        embeddings = tiny_encoder(_noise(1, num_samples))
    assert embeddings.shape == (1, audio_token_count(num_samples, tiny_encoder.config), TINY_LLM_HIDDEN)


def test_length_formula_by_hand():
    config = NatureLMConfig.full()
    # 3 s: 1 + (48000 - 400) // 160 = 298 frames -> 18 time patches -> 144 tokens -> 8 windows.
    assert audio_token_count(48_000, config) == 8
    # 0.495 s is the shortest input: 48 frames -> 3 time patches -> 24 tokens -> 1 window.
    assert min_num_samples(config) == 7920
    assert audio_token_count(7920, config) == 1
    assert audio_token_count(7919, config) == 0


def test_too_short_window_is_rejected(tiny_encoder):
    shortest = min_num_samples(tiny_encoder.config)
    with torch.no_grad():
        assert tiny_encoder(_noise(1, shortest)).shape[1] == 1
        with pytest.raises(AudioTooShortError, match=f"at least {shortest} samples"):
            tiny_encoder(_noise(1, shortest - 1))


@pytest.mark.parametrize(
    "bad", [torch.zeros(16_000), torch.zeros(1, 1, 16_000), torch.zeros(1, 16_000, dtype=torch.int16)]
)
def test_malformed_windows_are_rejected(tiny_encoder, bad):
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        tiny_encoder(bad)


def test_a_batch_equals_windows_encoded_one_by_one(tiny_encoder):
    windows = _noise(3, 48_000, seed=1)
    windows[2, 20_000:] = 0.0
    with torch.no_grad():
        batched = tiny_encoder(windows)
        single = torch.cat([tiny_encoder(window.unsqueeze(0)) for window in windows])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_bfloat16_encoder_runs_and_stays_close_to_float32():
    """bf16 rounding costs well under 2%; a broken low-precision kernel (see beats.convolve) costs ~100%."""
    torch.manual_seed(0)
    encoder = AudioEncoder(NatureLMConfig.tiny(), TINY_LLM_HIDDEN).eval()
    windows = _noise(2, 48_000, seed=3)
    with torch.no_grad():
        reference = encoder(windows)
        low_precision = encoder.to(torch.bfloat16)(windows)
    assert low_precision.dtype == torch.bfloat16
    assert low_precision.shape == reference.shape
    relative_error = (low_precision.float() - reference).norm() / reference.norm()
    assert relative_error < 0.02


@pytest.mark.parametrize(
    "conv, shape, options",
    [
        (torch.nn.functional.conv1d, (2, 48, 40), {"padding": 8, "groups": 4}),
        (torch.nn.functional.conv2d, (2, 1, 32, 32), {"stride": 16}),
    ],
)
def test_convolutions_under_bf16_autocast_compute_in_float32_and_return_what_autocast_would(conv, shape, options):
    """beats.convolve: the float32 result rounded once to bf16, where autocast alone would convolve in bf16 (slow
    cuDNN kernels on a GPU, wrong oneDNN ones on a CPU); its callers see the dtype autocast gives."""
    from naturelm_core.beats import convolve

    torch.manual_seed(0)
    x = torch.randn(shape)
    out_channels, in_per_group = (48, 12) if conv is torch.nn.functional.conv1d else (8, 1)
    kernel = (16,) if conv is torch.nn.functional.conv1d else (16, 16)
    weight, bias = torch.randn(out_channels, in_per_group, *kernel), torch.randn(out_channels)
    expected = conv(x, weight, bias, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = convolve(conv, x, weight, bias, **options)
        autocast_alone = conv(x, weight, bias, **options)
    assert got.dtype == autocast_alone.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.to(torch.bfloat16), rtol=0, atol=0)
    assert convolve(conv, x, weight, bias, **options).dtype == torch.float32  # no autocast: float32 in, out
