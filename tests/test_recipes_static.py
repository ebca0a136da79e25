"""Merge recipes on the static-cache decoder (the GPU fast path, run eagerly on the CPU).

Recipe rows must generate the eager path's ids, plain rows must keep their numbers bit for bit beside
spectral ones, and changing recipes must reuse the state: new buffer contents, no new state, and no
graph captured beyond each variant's first (plain, spectral).
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core import static_decoding
from naturelm_core.alphas import MergeRecipe
from naturelm_core.decoding import CachedDecoder
from naturelm_core.static_decoding import StaticDecoding
from tests.static_helpers import audio_rows, generate_ids

PROMPTS = [
    "Caption the audio.",
    "What is the common name for the focal species in the audio? Answer with the common name only.",
    "Is there a bird?",
    "Which frog is calling?",
]
MAX_NEW_TOKENS = 12
SPECTRAL_BATCH = [{"alpha": 0.8, "rank": 2}, {"layers": "linear:0.2:1", "modules": {"k_proj": 0.5}}, 0.5, 1.0]
RECIPE_BATCH = [{"modules": {"o_proj": 0, "q_proj": 0.25}}, {"alpha": 0.9, "layers": [0.5, 1]}, 0.5, 0.25]
MIXED_BATCH = [
    {"spectrum": [0.5, 1, 0.25]},
    {"alpha": 0.6, "layers": [1, 0.25], "spectrum": [1, 0.75]},
    {"alpha": 0.5, "layers": "linear:0:1", "rank": 3},
    0.7,
]


@pytest.fixture(scope="module")
def model(static_tiny_model):
    return static_tiny_model


@pytest.fixture(scope="module")
def rows() -> list[list[torch.Tensor]]:
    return audio_rows(len(PROMPTS), seed=11)


def _ids(model, rows, alphas, num_beams, static: bool, decoding: StaticDecoding | None = None, prompts=PROMPTS):
    return generate_ids(model, rows, prompts, alphas, num_beams, MAX_NEW_TOKENS, static, decoding)


@pytest.mark.parametrize("small_prefill_tokens", [0, 1024])
@pytest.mark.parametrize("num_beams", [1, 2, 3])
@pytest.mark.parametrize("alphas", [SPECTRAL_BATCH, RECIPE_BATCH, MIXED_BATCH], ids=["spectral", "recipes", "mixed"])
def test_static_decoding_generates_the_eager_ids_for_recipe_batches(
    model, rows, alphas, num_beams, small_prefill_tokens
):
    decoding = StaticDecoding(prompt_block=8, window_block=4, small_prefill_tokens=small_prefill_tokens)
    eager = _ids(model, rows, alphas, num_beams, static=False)
    assert _ids(model, rows, alphas, num_beams, static=True, decoding=decoding) == eager
    assert len(decoding.shapes) == 1


@torch.no_grad()
def test_logits_match_the_eager_decoder_at_every_step(model, rows):
    batch = model.build_inputs(rows, PROMPTS)
    merge = model.row_merge(MIXED_BATCH, len(rows))
    with model.row_alphas.applied(merge):
        eager = CachedDecoder(model.llm, batch)
        static = StaticDecoding(prompt_block=8, window_block=3).decoder(model.llm, batch, merge, 1, 9)
        eager_logits, static_logits = eager.prefill(), static.prefill()
        for _ in range(8):
            _assert_float32_close(static_logits, eager_logits)
            tokens = eager_logits.argmax(dim=-1)
            eager_logits, static_logits = eager.step(tokens), static.step(tokens)
        _assert_float32_close(static_logits, eager_logits)


def _assert_float32_close(value: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to float32 rounding of another operation order (see tests/test_static_decoding.py)."""
    assert float((value - reference).norm() / reference.norm()) < 2e-5
    torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-3)


@torch.no_grad()
def test_plain_and_recipe_rows_keep_their_exact_numbers_beside_spectral_rows(model, rows):
    """The spectral variant adds exact zeros to every other row's LoRA products: bit-identical logits."""
    batch = model.build_inputs(rows, PROMPTS)
    decoding = StaticDecoding(prompt_block=8, window_block=4)
    logits = {}
    for label, last in (("plain", 0.3), ("spectral", {"alpha": 0.3, "spectrum": [0.5, 1]})):
        merge = model.row_merge([*RECIPE_BATCH[:3], last], len(rows))
        decoder = decoding.decoder(model.llm, batch, merge, 1, 4)
        steps = [decoder.prefill().clone()]
        for _ in range(3):
            steps.append(decoder.step(steps[0].argmax(dim=-1)).clone())  # the same tokens in both runs
        logits[label] = torch.stack(steps)
    assert torch.equal(logits["spectral"][:, :3], logits["plain"][:, :3])
    assert not torch.equal(logits["spectral"][:, 3], logits["plain"][:, 3])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_a_recipe_of_only_an_alpha_is_the_float_on_the_static_path(model, rows, alpha):
    decoding = StaticDecoding(prompt_block=8, window_block=4)
    want = _ids(model, rows, alpha, 2, static=True, decoding=decoding)
    assert _ids(model, rows, {"alpha": alpha}, 2, static=True, decoding=decoding) == want
    assert _ids(model, rows, MergeRecipe(alpha=alpha, rank=4), 2, static=True, decoding=decoding) == want


def test_changing_recipes_reuses_the_state_and_captures_nothing_new(model, rows, monkeypatch):
    """Graphs are CUDA-only; the capture is faked, so what is proven is when a capture would happen: once
    per variant of a state, never because recipes changed. Ids stay the eager ones throughout."""
    variants = []
    monkeypatch.setattr(
        static_decoding._Runner, "_capture_graphs", lambda self, prefill: variants.append(self.state.spectral)
    )
    built = []
    monkeypatch.setattr(static_decoding, "DecodeState", _counting(static_decoding.DecodeState, built))
    decoding = StaticDecoding(use_graphs=True, prompt_block=256, window_block=4)  # one prompt capacity for all
    sequence = [[0.0, 0.5, 1.0, 0.2], RECIPE_BATCH, SPECTRAL_BATCH, MIXED_BATCH, [0.9, 0.1, 0.6, 0.3], SPECTRAL_BATCH]
    runners = []
    for alphas in sequence:
        assert _ids(model, rows, alphas, 2, static=True, decoding=decoding) == _ids(
            model, rows, alphas, 2, static=False
        )
        runners.extend(decoding._runners.values())
    assert len(runners) == len(sequence) and all(runner is runners[0] for runner in runners)
    assert len(built) == 1 and runners[0].state is built[0] and len(decoding.shapes) == 1
    assert variants == [False, True] and decoding.captures == 2


def test_the_state_holds_each_items_scales(model, rows):
    decoding = StaticDecoding(prompt_block=8, window_block=4)
    batch = model.build_inputs(rows, PROMPTS)
    merge = model.row_merge([0.3, {"alpha": 0.5, "modules": {"k_proj": 0.5}}, {"alpha": 0.5, "rank": 1}, 0.9], 4)
    state = decoding.decoder(model.llm, batch, merge.repeat_rows(2), 2, 4).runner.state
    state.load(batch, merge)
    rank = model.config.lora_rank
    assert torch.equal(state.scales[0], torch.full_like(state.scales[0], 0.3))  # a plain alpha, exactly
    assert state.scales[1, :, rank : 2 * rank].eq(0.25).all() and state.scales[1, :, :rank].eq(0.5).all()
    assert state.scales[2].eq(0).all() and state.spectral_scales[[0, 1, 3]].eq(0).all()
    assert state.spectral_scales[2, :, ::rank].eq(0.5).all() and state.spectral_scales[2, :, 1::rank].eq(0).all()
    assert state.spectral


def _counting(cls, built: list):
    class Counting(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    return Counting
