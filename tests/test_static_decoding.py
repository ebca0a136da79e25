"""The static-cache decoder (the GPU fast path, run eagerly on the CPU) against transformers' eager decoding.

On a GPU the same forward pass is captured in CUDA graphs; what it computes is pinned down here, on the
tiny checkpoint in float32, where both paths must agree to rounding and generate identical ids.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from naturelm_core import static_decoding
from naturelm_core.decoding import CachedDecoder
from naturelm_core.llama_step import LlamaStep, StaticDecodingUnsupported
from naturelm_core.loading import load_model
from naturelm_core.static_decoding import StaticDecoding, row_capacity
from naturelm_core.tiny import write_tiny_checkpoint
from tests.static_helpers import audio_rows, generate_ids

PROMPTS = [
    "Caption the audio.",
    "What is the common name for the focal species in the audio? Answer with the common name only.",
    "Is there a bird?",
]
ALPHAS = [0.0, 0.5, 1.0]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def rows() -> list[list[torch.Tensor]]:
    """Three different windows' worth of audio embeddings (29 x 64 each), one per prompt."""
    return audio_rows(len(PROMPTS), seed=3)


def _ids(model, rows, prompts, alphas, num_beams, static: bool, decoding: StaticDecoding | None = None):
    return generate_ids(model, rows, prompts, alphas, num_beams, MAX_NEW_TOKENS, static, decoding)


# Small blocks so that a 12-token generation crosses several attention windows; small_prefill_tokens=0
# prefills once per item (the sweep path), the default once per beam row (the interactive, graphed path).
@pytest.mark.parametrize("small_prefill_tokens", [0, 1024])
@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_static_decoding_generates_the_eager_ids(model, rows, num_beams, small_prefill_tokens):
    decoding = StaticDecoding(prompt_block=8, window_block=4, small_prefill_tokens=small_prefill_tokens)
    eager = _ids(model, rows, PROMPTS, ALPHAS, num_beams, static=False)
    static = _ids(model, rows, PROMPTS, ALPHAS, num_beams, static=True, decoding=decoding)
    assert static == eager
    assert all(len(ids) > 1 for ids in static)
    assert len(decoding.shapes) == 1


@torch.no_grad()
def test_logits_match_the_eager_decoder_at_every_step(model, rows):
    """Prefill and eight steps fed the same tokens: left padding, per-row alphas and three windows."""
    batch = model.build_inputs(rows, PROMPTS)
    alphas = torch.tensor([0.2, 0.9, 1.7])
    with model.row_alphas.applied(alphas):
        eager = CachedDecoder(model.llm, batch)
        static = StaticDecoding(prompt_block=8, window_block=3).decoder(model.llm, batch, alphas, 1, 9)
        eager_logits, static_logits = eager.prefill(), static.prefill()
        for _ in range(8):
            _assert_float32_close(static_logits, eager_logits)
            tokens = eager_logits.argmax(dim=-1)
            eager_logits, static_logits = eager.step(tokens), static.step(tokens)
        _assert_float32_close(static_logits, eager_logits)


@torch.no_grad()
def test_a_decode_step_of_several_rows_returns_the_lm_heads_own_columns(model, rows):
    """No float32 copy of a sweep batch's logits each step (164-168 µs of a 12.2 ms step on an H100): several rows'
    logits are the lm_head's output in the state's buffer, in the model's dtype; a prefill's and a one-row step's
    are the state's float32 logits."""
    alphas = torch.tensor([0.2, 0.9, 1.7])
    batch = model.build_inputs(rows, PROMPTS)
    with model.row_alphas.applied(alphas):
        decoder = StaticDecoding(prompt_block=8, window_block=3).decoder(model.llm, batch, alphas, 1, 4)
        state = decoder.runner.state
        step = decoder.step(decoder.prefill().argmax(dim=-1))
    assert step.data_ptr() == state.projected.data_ptr() and step.shape == state.logits[:3].shape
    one = model.build_inputs(rows[:1], PROMPTS[:1])
    with model.row_alphas.applied(alphas[:1]):
        decoder = StaticDecoding(prompt_block=8, window_block=3).decoder(model.llm, one, alphas[:1], 1, 4)
        state = decoder.runner.state
        prefill = decoder.prefill()
        step = decoder.step(prefill.argmax(dim=-1))
    assert step.data_ptr() == state.logits.data_ptr() and step.dtype == torch.float32


def _assert_float32_close(value: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to float32 rounding of another operation order (~1e-6 relative; logits here reach 30).

    A wrong mask, position or alpha moves them by O(1).
    """
    assert float((value - reference).norm() / reference.norm()) < 2e-5
    torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-3)


def test_a_state_serves_new_alphas_and_prompts_without_a_rebuild(model, rows):
    """The second call reuses the first call's buffers (stale columns must stay invisible) at new alphas."""
    decoding = StaticDecoding(prompt_block=256, window_block=4)  # both batches: one prompt capacity
    first = _ids(model, rows, PROMPTS, ALPHAS, 2, static=True, decoding=decoding)
    runner = next(iter(decoding._runners.values()))
    new_rows, new_prompts, new_alphas = rows[::-1], ["Caption it.", "Which bird?", "Any frogs?"], [0.9, 0.1, 0.6]
    second = _ids(model, new_rows, new_prompts, new_alphas, 2, static=True, decoding=decoding)
    assert second == _ids(model, new_rows, new_prompts, new_alphas, 2, static=False)
    assert second != first
    assert next(iter(decoding._runners.values())) is runner
    assert len(decoding.shapes) == 1


def test_weights_loaded_in_place_are_seen_by_the_next_generation(model, rows):
    """The fused LoRA A copy is refreshed per generation; a replaced tensor rebuilds the step."""
    twin = copy.deepcopy(model)
    decoding = StaticDecoding()
    before = _ids(twin, rows, PROMPTS, ALPHAS, 1, static=True, decoding=decoding)
    step = decoding.step
    with torch.no_grad():
        for name, parameter in twin.llm.named_parameters():
            if ".lora_A." in name and ".v_proj." in name:
                parameter.mul_(-3.0)
    after = _ids(twin, rows, PROMPTS, ALPHAS, 1, static=True, decoding=decoding)
    assert after == _ids(twin, rows, PROMPTS, ALPHAS, 1, static=False)
    assert after != before
    assert decoding.step is step
    layer = twin.llm.model.layers[0].self_attn.q_proj.base_layer
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 2.0)
    replaced = _ids(twin, rows, PROMPTS, ALPHAS, 1, static=True, decoding=decoding)
    assert replaced == _ids(twin, rows, PROMPTS, ALPHAS, 1, static=False)
    assert decoding.step is not step


def test_a_copied_model_starts_without_states(model, rows):
    _ids(model, rows, PROMPTS, ALPHAS, 1, static=True, decoding=StaticDecoding())
    assert model.static_decoding.shapes
    twin = copy.deepcopy(model)
    assert twin.static_decoding.shapes == []
    assert twin.static_decoding.step is None


def test_static_decoding_is_used_on_cuda_only_unless_asked_and_never_in_training(model):
    assert model.decode_with_static_cache is None
    assert not model.uses_static_cache  # the tiny model is on the CPU
    model.decode_with_static_cache = True
    try:
        assert model.uses_static_cache
        model.train()
        assert not model.uses_static_cache
    finally:
        model.eval()
        model.decode_with_static_cache = None


def test_an_unsupported_model_falls_back_to_the_eager_decoder(model, rows, monkeypatch, caplog):
    expected = _ids(model, rows, PROMPTS, ALPHAS, 2, static=False)

    def refuse(*args, **kwargs):
        raise StaticDecodingUnsupported("merged LoRA")

    monkeypatch.setattr(model.static_decoding, "decoder", refuse)
    model.decode_with_static_cache = True
    try:
        assert model.generate_ids_from_embeddings(rows, PROMPTS, ALPHAS, 2, MAX_NEW_TOKENS) == expected
        assert model.decode_with_static_cache is False
        assert "merged LoRA" in caplog.text
    finally:
        model.decode_with_static_cache = None


def test_a_llama_without_lora_is_refused(model):
    plain = LlamaForCausalLM(model.llm.config).eval()
    with pytest.raises(StaticDecodingUnsupported, match="not a LoRA layer"):
        LlamaStep(plain)


def test_bad_arguments_are_refused(model, rows):
    batch = model.build_inputs(rows, PROMPTS)
    decoding = StaticDecoding()
    with pytest.raises(ValueError, match="expected 6 row alphas"):
        decoding.decoder(model.llm, batch, torch.zeros(3), 2, 4)
    alphas = torch.zeros(3)
    with torch.no_grad(), model.row_alphas.applied(alphas):
        decoder = decoding.decoder(model.llm, batch, alphas, 1, 2)
        tokens = decoder.prefill().argmax(dim=-1)
        decoder.step(tokens)
        decoder.step(tokens)
        with pytest.raises(RuntimeError, match="holds 2 new tokens"):
            decoder.step(tokens)


@pytest.mark.parametrize(
    "rows,capacity", [(1, 1), (2, 2), (3, 4), (17, 32), (32, 32), (33, 64), (176, 192), (352, 352), (353, 384)]
)
def test_row_capacity_rounds_up_to_few_shapes(rows, capacity):
    assert row_capacity(rows) == capacity


def test_running_out_of_memory_while_capturing_keeps_the_fast_kernels(model, rows, monkeypatch):
    """An out-of-memory error is the batch's size, not cuDNN's or Triton's: it must reach the engine
    (which retries with fewer rows) without switching the faster kernels off for good."""
    from naturelm_core import static_decoding

    def out_of_memory(self, prefill):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(static_decoding._Runner, "_capture_graphs", out_of_memory)
    decoding = StaticDecoding(use_graphs=True)
    batch = model.build_inputs(rows, PROMPTS)
    alphas = torch.zeros(3)
    step = decoding._llama_step(model.llm)
    step.cudnn_gqa = step.fused_rotary = step.fused_swiglu = step.fused_rmsnorm = True  # as on a GPU where they work
    step.fused_decode_attention = step.fused_low_rank = True
    with pytest.raises(torch.OutOfMemoryError):
        decoding.decoder(model.llm, batch, alphas, 1, 4)
    assert step.cudnn_gqa and step.fused_rotary and step.fused_swiglu and step.fused_rmsnorm
    assert step.fused_decode_attention and step.fused_low_rank


def test_releasing_cached_states_frees_the_shapes_and_keeps_the_step(model, rows):
    decoding = StaticDecoding()
    _ids(model, rows, PROMPTS, ALPHAS, 1, static=True, decoding=decoding)
    step = decoding.step
    assert decoding.shapes
    model.release_cached_states()
    assert decoding.shapes == [] and decoding.step is step
    assert _ids(model, rows, PROMPTS, ALPHAS, 1, static=True, decoding=decoding) == _ids(
        model, rows, PROMPTS, ALPHAS, 1, static=False
    )


@pytest.mark.parametrize("chunked_prefill", [False, True])
@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("same_shape", [False, True])
def test_a_generation_paused_for_another_one_gives_both_their_own_ids(
    model, rows, num_beams, same_shape, chunked_prefill, monkeypatch
):
    """The engine answers a waiting user inside a sweep batch, between decode steps and (chunked) between
    parts of the prefill: the nested generation must leave the paused one's cache, alphas and search untouched,
    and vice versa, also when both have the same shape (a sweep's last, small batch) and would share a state."""
    outer = (rows[:2], PROMPTS[1:2] * 2, [0.3, 0.6]) if same_shape else (rows, PROMPTS, [0.0, 0.5, 1.0])
    inner = (rows[1:3], PROMPTS[1:2] * 2, [0.8, 0.1])
    inner_beams = num_beams if same_shape else 1
    decoding = StaticDecoding(small_prefill_tokens=0)  # prefill eagerly, as a sweep batch does
    alone_outer = _ids(model, *outer, num_beams, static=True, decoding=decoding)
    alone_inner = _ids(model, *inner, inner_beams, static=True, decoding=decoding)
    if chunked_prefill:
        monkeypatch.setattr(static_decoding, "PAUSE_PREFILL_TOKENS", 1)  # one item per chunk
    nested: list[list[list[int]]] = []

    def answer_a_user() -> None:
        nested.append(model.generate_ids_from_embeddings(*inner, inner_beams, MAX_NEW_TOKENS))

    model.decode_with_static_cache = True
    try:
        paused = model.generate_ids_from_embeddings(*outer, num_beams, MAX_NEW_TOKENS, between_steps=answer_a_user)
    finally:
        model.decode_with_static_cache = None
    decode_pauses = 2  # at every 4th of 12 steps (these rows do not all stop early)
    prefill_pauses = len(outer[0]) - 1 if chunked_prefill else 0
    assert len(nested) >= prefill_pauses + decode_pauses
    assert paused == alone_outer
    assert all(ids == alone_inner for ids in nested)
    assert decoding.shapes.count(decoding.shapes[-1]) == (2 if same_shape else 1)  # a second slot, only if shared


def test_the_eager_path_never_pauses(model, rows):
    calls = []
    ids = _ids(model, rows, PROMPTS, ALPHAS, 1, static=False)
    model.decode_with_static_cache = False
    try:
        again = model.generate_ids_from_embeddings(rows, PROMPTS, ALPHAS, 1, MAX_NEW_TOKENS, between_steps=calls.append)
    finally:
        model.decode_with_static_cache = None
    assert again == ids and calls == []


def test_a_used_state_rewinds_to_its_first_column_for_another_capture(model, rows):
    """A state that met a spectral recipe after a full generation is captured again: its warm-up decodes must
    start at the first generated column, or they index past the cache (a device-side assert on the GPU)."""
    decoding = StaticDecoding(small_prefill_tokens=0)
    _ids(model, rows, PROMPTS, ALPHAS, 2, static=True, decoding=decoding)
    (state,) = [runner.state for runner in decoding._runners.values()]
    fresh_columns = state.prompt_capacity + torch.arange(state.beams)
    assert not torch.equal(state.columns, fresh_columns)  # left where the generation ended
    state.rewind()
    assert torch.equal(state.columns, fresh_columns) and not state.positions.any()


def _fresh() -> StaticDecoding:
    return StaticDecoding(prompt_block=8, window_block=4, small_prefill_tokens=0)


def test_a_shape_met_once_runs_in_a_held_larger_state_and_gets_its_own_when_met_again(model, rows):
    """A sweep meets one-off batch sizes (its first recording alone, a short last batch): a state of their own
    would cost a graph capture each, a held larger state only its padding rows for one generation."""
    decoding = _fresh()
    _ids(model, rows, PROMPTS, ALPHAS, 2, static=True, decoding=decoding)  # 3 items x 2 beams: a 4-item state
    held = decoding.shapes
    one = ([rows[1]], PROMPTS[1:2], [0.4])  # the batch's longest prompt: the same prompt capacity
    alone = _ids(model, *one, 2, static=True, decoding=_fresh())
    assert _ids(model, *one, 2, static=True, decoding=decoding) == alone
    assert decoding.shapes == held  # no state built: the 4-item state served the 1-item batch
    assert _ids(model, *one, 2, static=True, decoding=decoding) == alone
    assert len(decoding.shapes) == 2 and decoding.shapes[-1][0] == 1  # met again: a state of its own


def test_small_batches_with_min_rows_share_one_state_and_keep_their_answers(model, rows):
    """A sweep's first and last batches come in any size: with min_rows, batches of 1, 2 and 3 items (2 beams)
    all decode in one 8-item state, met once or again, and each answer is what its batch alone gives."""
    decoding = _fresh()
    for count in (1, 2, 3, 1, 2):
        batch = (rows[:count], PROMPTS[1:2] * count, ALPHAS[:count])  # one prompt capacity
        alone = _ids(model, *batch, 2, static=True, decoding=_fresh())
        model.static_decoding, model.decode_with_static_cache = decoding, True
        try:
            padded = model.generate_ids_from_embeddings(*batch, 2, MAX_NEW_TOKENS, min_rows=16)
        finally:
            model.decode_with_static_cache = None
        assert padded == alone, count
        assert [shape[:2] for shape in decoding.shapes] == [(8, 2)]  # 16 rows: 8 items of 2 beams


def test_only_a_free_state_of_the_same_beams_and_lengths_is_borrowed(model, rows):
    decoding = _fresh()
    _ids(model, rows, PROMPTS, ALPHAS, 2, static=True, decoding=decoding)
    _ids(model, [rows[1]], PROMPTS[1:2], [0.4], 1, static=True, decoding=decoding)  # greedy: other beams
    _ids(model, [rows[0]], PROMPTS[:1], [0.4], 2, static=True, decoding=decoding)  # a shorter prompt capacity
    large, greedy, shorter = decoding.shapes  # each built a state of its own
    assert greedy[:2] == (1, 1) and shorter[:2] == (1, 2) and shorter[2] < large[2]

    nested: list[int] = []
    outer = _fresh()

    def answer_a_user() -> None:  # the outer generation holds the only larger state
        if not nested:
            nested.append(len(model.generate_ids_from_embeddings([rows[1]], PROMPTS[1:2], [0.4], 2, MAX_NEW_TOKENS)))

    model.static_decoding, model.decode_with_static_cache = outer, True
    try:
        model.generate_ids_from_embeddings(rows, PROMPTS, ALPHAS, 2, MAX_NEW_TOKENS, between_steps=answer_a_user)
    finally:
        model.decode_with_static_cache = None
    assert nested and [shape[0] for shape in outer.shapes] == [4, 1]
