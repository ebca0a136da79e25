"""Per-row alpha: each row computes with (1 - alpha) * W_base + alpha * W_ft, and no alpha outlives its call."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from transformers import LlamaForCausalLM

from naturelm_core.alpha import RowAlphas, RowMerge
from naturelm_core.alphas import validate_alphas
from naturelm_core.decoding import CachedDecoder
from naturelm_core.loading import load_model
from naturelm_core.tiny import write_tiny_checkpoint

PROMPT = "What is the common name for the focal species in the audio?"
ALPHAS = [0.0, 0.25, 0.5, 1.0]
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def model64(model):
    """The same model in float64: float32 alone differs by ~3e-5 on these +-30 logits between two
    correct implementations, so the interpolation identity is checked where rounding cannot hide a bug."""
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def model_unit_logits(model):
    """The float32 model with lm_head scaled so logits are O(1): float32 rounding of the two computations
    then stays far below 1e-5, so the identity can be checked in the production dtype at that tolerance."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.llm.get_output_embeddings().weight.mul_(1 / 32)
    return scaled


@pytest.fixture(scope="module")
def audio():
    """Two rows of 29 audio embeddings each, at the tiny LLM's width."""
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(29, 64, generator=generator)] for _ in range(2)]


def merged_llm(model, alpha: float) -> LlamaForCausalLM:
    """A plain Llama (no LoRA) whose adapted weights are explicitly (1 - alpha) * W_base + alpha * W_ft."""
    lora_state = model.llm.state_dict()
    weights = {name.replace(".base_layer", ""): t.clone() for name, t in lora_state.items() if ".lora_" not in name}
    scaling = model.config.lora_alpha / model.config.lora_rank
    adapted = [
        name.removesuffix(".lora_A.default.weight") for name in lora_state if name.endswith("lora_A.default.weight")
    ]
    assert len(adapted) == 4 * model.llm.config.num_hidden_layers
    for prefix in adapted:
        base = weights[f"{prefix}.weight"]
        finetuned = (
            base
            + lora_state[f"{prefix}.lora_B.default.weight"] @ lora_state[f"{prefix}.lora_A.default.weight"] * scaling
        )
        weights[f"{prefix}.weight"] = (1 - alpha) * base + alpha * finetuned
    llm = LlamaForCausalLM(model.llm.config).to(model.dtype).eval()
    llm.load_state_dict(weights, strict=True)
    return llm


def last_logits(llm: LlamaForCausalLM, batch) -> torch.Tensor:
    with torch.no_grad():
        output = llm(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        )
    return output.logits[:, -1]


# --- validation -----------------------------------------------------------------------------------


def test_a_single_alpha_is_broadcast_to_every_row():
    assert validate_alphas(0.5, 3) == [0.5, 0.5, 0.5]
    assert validate_alphas([0, 1, 0.25], 3) == [0.0, 1.0, 0.25]


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2.0, math.nan, math.inf, -math.inf])
def test_alphas_outside_zero_to_one_are_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha of row 1 .* \[0, 1\].*allow_extrapolation"):
        validate_alphas([0.5, alpha], 2)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 1.5, 2.0])
def test_extrapolation_allows_minus_one_to_two(alpha):
    assert validate_alphas(alpha, 1, allow_extrapolation=True) == [alpha]


@pytest.mark.parametrize("alpha", [-1.01, 2.01, math.nan])
def test_extrapolation_still_has_limits(alpha):
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        validate_alphas(alpha, 1, allow_extrapolation=True)


@pytest.mark.parametrize("alpha", ["0.5", None, True, [0.5]])
def test_an_alpha_must_be_a_real_number(alpha):
    with pytest.raises(TypeError, match="alpha of row 0 must be a real number"):
        validate_alphas([alpha], 1)


def test_one_alpha_per_row():
    with pytest.raises(ValueError, match="got 2 alphas for 3 rows"):
        validate_alphas([0.1, 0.2], 3)


def test_the_model_refuses_a_bad_alpha_before_running(model, audio):
    with pytest.raises(ValueError, match=r"alpha of row 1 is 1\.5"):
        model.generate_from_embeddings(audio, PROMPT, [0.5, 1.5], max_new_tokens=2)
    assert (
        len(model.generate_from_embeddings(audio, PROMPT, [0.5, 1.5], max_new_tokens=2, allow_extrapolation=True)) == 2
    )


# --- what an alpha computes -------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_logits_equal_those_of_explicitly_interpolated_weights(model64, audio, alpha):
    logits = model64.next_token_logits(audio, PROMPT, alpha)
    want = last_logits(merged_llm(model64, alpha), model64.build_inputs(audio, PROMPT))
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


def test_each_row_of_a_mixed_batch_computes_with_its_own_interpolated_weights(model64, audio):
    rows = [audio[0]] * len(ALPHAS)
    logits = model64.next_token_logits(rows, PROMPT, ALPHAS)
    batch = model64.build_inputs(rows, PROMPT)
    for row, alpha in enumerate(ALPHAS):
        torch.testing.assert_close(logits[row], last_logits(merged_llm(model64, alpha), batch)[row], atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_float32_logits_equal_those_of_interpolated_weights_at_1e_5(model_unit_logits, audio, alpha):
    model = model_unit_logits
    logits = model.next_token_logits(audio, PROMPT, alpha)
    want = last_logits(merged_llm(model, alpha), model.build_inputs(audio, PROMPT))
    assert logits.dtype == torch.float32 and want.abs().max() > 0.1
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


def test_float32_logits_agree_with_interpolated_weights_to_float32_rounding(model, audio):
    """The production dtype: same identity, within the ~3e-5 that float32 rounding allows at these logits."""
    want = last_logits(merged_llm(model, 0.5), model.build_inputs(audio, PROMPT))
    torch.testing.assert_close(model.next_token_logits(audio, PROMPT, 0.5), want, atol=1e-4, rtol=0)


def test_alpha_zero_is_exactly_the_llm_without_lora(model, audio):
    with torch.no_grad(), model.llama_model.disable_adapter():
        without_lora = CachedDecoder(model.llm, model.build_inputs(audio, PROMPT)).prefill()
    assert torch.equal(model.next_token_logits(audio, PROMPT, 0.0), without_lora)
    # ... and the LoRA is not a no-op, so the equalities in this file are not vacuous.
    assert (model.next_token_logits(audio, PROMPT, 1.0) - without_lora).abs().max() > 0.1


# --- no alpha outlives its call ---------------------------------------------------------------------


def test_interleaved_calls_each_match_a_fresh_model(model, tiny_dir, audio):
    """Upstream's defect: after 0.5, a request at 1.0 still ran at 0.5. Here each call stands alone."""
    interleaved = [
        model.generate_ids_from_embeddings(audio, PROMPT, alpha, max_new_tokens=MAX_NEW_TOKENS)
        for alpha in (0.5, 1.0, 0.0, 1.0)
    ]
    fresh = {
        alpha: load_model(tiny_dir, device="cpu", dtype="float32").generate_ids_from_embeddings(
            audio, PROMPT, alpha, max_new_tokens=MAX_NEW_TOKENS
        )
        for alpha in (0.5, 1.0, 0.0)
    }
    assert interleaved == [fresh[0.5], fresh[1.0], fresh[0.0], fresh[1.0]]
    assert len({str(ids) for ids in interleaved}) == 3  # the alphas really answer differently


def test_the_lora_layers_refuse_to_run_outside_a_call(model, audio):
    model.generate_from_embeddings(audio, PROMPT, 0.7, max_new_tokens=2)
    batch = model.build_inputs(audio, PROMPT)
    with pytest.raises(RuntimeError, match="without an alpha"):
        last_logits(model.llm, batch)


def test_an_exception_inside_a_call_still_clears_its_alphas():
    row_alphas = RowAlphas(capacity=4)
    with pytest.raises(KeyError), row_alphas.applied(torch.tensor([0.5, 1.0])):
        raise KeyError("boom")
    with pytest.raises(RuntimeError, match="without an alpha"):
        row_alphas.scale_rows(torch.ones(2, 3))


def test_rows_are_scaled_by_their_own_alpha_and_must_match_in_number():
    row_alphas = RowAlphas(capacity=1)  # grows when a call has more rows
    with row_alphas.applied(torch.tensor([0.0, 0.5, 2.0])):
        scaled = row_alphas.scale_rows(torch.ones(3, 2, 4, dtype=torch.bfloat16))
        assert scaled.dtype == torch.bfloat16
        assert scaled[:, 0, 0].tolist() == [0.0, 0.5, 2.0]
        with pytest.raises(RuntimeError, match="4 rows but 3 alphas"):
            row_alphas.scale_rows(torch.ones(4, 2))


def test_each_layer_and_projection_reads_its_own_scale():
    row_alphas = RowAlphas(capacity=2, num_layers=2, num_modules=4)
    scales = torch.arange(16, dtype=torch.float32).view(2, 2, 4)  # [rows, layers, modules]
    with row_alphas.applied(RowMerge(scales)):
        assert row_alphas.scale_rows(torch.ones(2, 3), layer=1, module=2)[:, 0].tolist() == [6.0, 14.0]
    with row_alphas.applied(torch.tensor([0.5, 0.25])):  # plain alphas: the same in every layer and projection
        assert row_alphas.scale_rows(torch.ones(2, 3), layer=1, module=3)[:, 0].tolist() == [0.5, 0.25]
    with (
        pytest.raises(ValueError, match="for a model of 2 layers x 4 modules"),
        row_alphas.applied(RowMerge(scales[:, :1])),
    ):
        pass


def test_calls_cannot_nest_in_one_thread():
    row_alphas = RowAlphas()
    with (
        row_alphas.applied(torch.tensor([0.5])),
        pytest.raises(RuntimeError, match="cannot nest"),
        row_alphas.applied(torch.tensor([1.0])),
    ):
        pass


def test_concurrent_calls_on_one_model_do_not_mix_their_alphas(model, audio):
    expected = {alpha: model.generate_ids_from_embeddings(audio, PROMPT, alpha, max_new_tokens=4) for alpha in (0, 1)}
    results: dict[float, list] = {0: [], 1: []}

    def worker(alpha: float) -> None:
        for _ in range(3):
            results[alpha].append(model.generate_ids_from_embeddings(audio, PROMPT, alpha, max_new_tokens=4))

    threads = [threading.Thread(target=worker, args=(alpha,)) for alpha in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {alpha: [expected[alpha]] * 3 for alpha in (0, 1)}


def test_a_copied_model_has_its_own_alpha_state(model, audio):
    """A deep copy must not share the original's alphas (or its lock): each copy serves its own calls."""
    want = model.next_token_logits(audio, PROMPT, 0.25)
    twin = copy.deepcopy(model)
    assert twin.row_alphas is not model.row_alphas
    with model.row_alphas.applied(torch.tensor([1.0, 1.0])):
        assert torch.equal(twin.next_token_logits(audio, PROMPT, 0.25), want)


def test_alpha_adds_no_tensor_names(model):
    names = list(model.llama_model.state_dict())
    assert not [name for name in names if "dropout" in name or "alpha" in name]
    assert "base_model.model.model.layers.1.self_attn.o_proj.lora_B.default.weight" in names
