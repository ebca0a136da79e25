"""What a merge recipe computes: each row equals a Llama whose weights were set by the recipe's formula.

For layer l, projection m with LoRA factors A, B and B A = U diag(sigma) V^T, a recipe row computes with
W + alpha * layers[l] * modules[m] * s * U diag(w * sigma) V^T. Here such weights are written explicitly
into a plain Llama (no LoRA) and compared with the model's rows, alone and in mixed batches.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from naturelm_core.alpha import RowMerge
from naturelm_core.alphas import AlphaError, MergeRecipe, check_grid_point
from naturelm_core.decoding import CachedDecoder, greedy_search
from naturelm_core.engine import Engine, GenerationSettings
from naturelm_core.recipes import MERGE_MODULES
from naturelm_core.spectral import lora_svd, singular_maps

PROMPT = "What is the common name for the focal species in the audio?"
MAX_NEW_TOKENS = 8
KINDS = ("layers", "ramp", "modules", "rank", "spectrum", "combined")


def random_recipe(kind: str, seed: int, num_layers: int, rank: int) -> MergeRecipe:
    """A recipe of one kind with random weights k / 64 in [0, 1]: every product is in range, and exact in
    float32, the precision of a row's scales (so float64 logits can be held to 1e-5)."""
    rng = random.Random(f"{kind}-{seed}")

    def weight() -> float:
        return rng.randint(0, 64) / 64

    parts = {
        "layers": {"layers": [weight() for _ in range(num_layers)]},
        "ramp": {"layers": f"linear:{weight()}:{weight()}"},
        "modules": {"modules": {m: weight() for m in rng.sample(MERGE_MODULES, 3)}},
        "rank": {"rank": rng.randint(1, rank - 1)},
        "spectrum": {"spectrum": [weight() for _ in range(rng.randint(1, rank))]},
    }
    if kind != "combined":
        return MergeRecipe.from_dict(parts[kind])
    spectral = parts[rng.choice(["rank", "spectrum"])]
    return MergeRecipe.from_dict({"alpha": rng.randint(16, 64) / 64, **parts["ramp"], **parts["modules"], **spectral})


def formula_llm(model, recipe: MergeRecipe) -> LlamaForCausalLM:
    """A plain Llama whose adapted weights are W + alpha * layers[l] * modules[m] * s * U diag(w sigma) V^T."""
    state = model.llm.state_dict()
    weights = {name.replace(".base_layer", ""): t.clone() for name, t in state.items() if ".lora_" not in name}
    scaling = model.config.lora_alpha / model.config.lora_rank
    rank, num_layers = model.config.lora_rank, model.num_layers
    layers, modules = recipe.layer_multipliers(num_layers), recipe.module_multipliers()
    spectral = recipe.spectral_weights(rank) or (1.0,) * rank
    adapted = [name.removesuffix(".lora_A.default.weight") for name in state if name.endswith(".lora_A.default.weight")]
    assert len(adapted) == len(MERGE_MODULES) * num_layers
    for prefix in adapted:
        layer, module = int(prefix.split(".")[2]), MERGE_MODULES.index(prefix.split(".")[-1])
        u, sigma, vt = lora_svd(state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"])
        delta = u @ torch.diag(torch.tensor(spectral, dtype=torch.float64) * sigma) @ vt
        factor = recipe.alpha * layers[layer] * modules[module] * scaling
        weights[f"{prefix}.weight"] = (weights[f"{prefix}.weight"].double() + factor * delta).to(model.dtype)
    llm = LlamaForCausalLM(model.llm.config).to(model.dtype).eval()
    llm.load_state_dict(weights, strict=True)
    return llm


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def model64(tiny_model):
    """float64, where rounding cannot hide a wrong formula (see tests/test_alpha.py)."""
    return copy.deepcopy(tiny_model).double()


@pytest.fixture(scope="module")
def audio():
    generator = torch.Generator().manual_seed(7)
    return [[torch.randn(29, 64, generator=generator)] for _ in range(2)]


def _recipes(model, seeds=(0, 1)) -> list[MergeRecipe]:
    return [random_recipe(kind, seed, model.num_layers, model.config.lora_rank) for kind in KINDS for seed in seeds]


# --- the singular basis -------------------------------------------------------------------------------------


def test_the_svd_basis_reproduces_every_lora_product(model):
    state = model.llm.state_dict()
    for name in [n for n in state if n.endswith(".lora_A.default.weight")]:
        lora_a, lora_b = state[name], state[name.replace("lora_A", "lora_B")]
        product = lora_b.double() @ lora_a.double()
        u, sigma, vt = (t.float().double() for t in lora_svd(lora_a, lora_b))  # cast as served
        assert float((u @ torch.diag(sigma) @ vt - product).norm() / product.norm()) < 1e-6
        assert torch.all(sigma[:-1] >= sigma[1:])
        torch.testing.assert_close(u.T @ u, torch.eye(len(sigma), dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(vt @ vt.T, torch.eye(len(sigma), dtype=torch.float64), atol=1e-6, rtol=0)
        into, out_of = (t.float().double() for t in singular_maps(lora_a, lora_b))  # the maps the rows use
        assert float((lora_b.double() @ out_of @ into @ lora_a.double() - product).norm() / product.norm()) < 1e-6
        torch.testing.assert_close(into @ lora_a.double(), vt, atol=1e-6, rtol=0)


def test_the_basis_follows_weights_loaded_in_place(model):
    twin = copy.deepcopy(model)
    basis = next(m for m in twin.llm.modules() if type(m).__name__ == "RowScaledDropout").basis
    before = basis.maps()
    assert basis.maps() is before  # computed once
    with torch.no_grad():
        basis.factors()[1].mul_(2.0)
    into, out_of = basis.maps()
    torch.testing.assert_close(into, before[0])  # B's scale moves sigma, not the directions V^T
    torch.testing.assert_close(out_of, before[1])  # ... and U sigma = B out_of: out_of is unchanged too


# --- each recipe row equals explicitly merged weights ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_those_of_the_formula_weights(model64, audio, kind):
    for seed in (0, 1):
        recipe = random_recipe(kind, seed, model64.num_layers, model64.config.lora_rank)
        logits = model64.next_token_logits(audio, PROMPT, recipe)
        batch = model64.build_inputs(audio, PROMPT)
        with torch.no_grad():
            want = CachedDecoder(formula_llm(model64, recipe), batch).prefill()
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_ids_equal_those_of_the_formula_weights(model, audio, kind):
    """float32, the production path's dtype on a CPU: the very same tokens."""
    for seed in (0, 1):
        recipe = random_recipe(kind, seed, model.num_layers, model.config.lora_rank)
        ids = model.generate_ids_from_embeddings(audio, PROMPT, recipe.to_dict(), 1, MAX_NEW_TOKENS)
        with torch.no_grad():
            decoder = CachedDecoder(formula_llm(model, recipe), model.build_inputs(audio, PROMPT))
            assert ids == greedy_search(decoder, MAX_NEW_TOKENS, model.stop_ids)


def test_the_recipes_really_change_the_answers(model, audio):
    """Guards the equalities above against a recipe path that silently ran at alpha 1."""
    plain = model.next_token_logits(audio, PROMPT, 1.0)
    for recipe in _recipes(model, seeds=(0,)):
        assert (model.next_token_logits(audio, PROMPT, recipe) - plain).abs().max() > 1e-2, recipe.name


# --- mixed batches and plain rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 2])
def test_each_row_of_a_mixed_batch_answers_as_it_does_alone(model, audio, num_beams):
    points = [0.5, *_recipes(model, seeds=(2,)), {"alpha": 0.7, "layers": "linear:0.2:1"}, 1.0]
    rows = [audio[i % 2] for i in range(len(points))]
    together = model.generate_ids_from_embeddings(rows, PROMPT, points, num_beams, MAX_NEW_TOKENS)
    alone = [
        model.generate_ids_from_embeddings([r], PROMPT, [p], num_beams, MAX_NEW_TOKENS)[0]
        for r, p in zip(rows, points, strict=True)
    ]
    assert together == alone
    assert len({str(ids) for ids in together}) > len(points) // 2


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_a_recipe_of_only_an_alpha_gives_the_floats_numbers_exactly(model, audio, alpha):
    want = model.next_token_logits(audio, PROMPT, alpha)
    equivalent = [
        {"alpha": alpha},
        MergeRecipe(alpha=alpha),
        {"alpha": alpha, "layers": [1, 1], "modules": {"q_proj": 1}},  # defaults, dropped
        {"alpha": alpha, "rank": model.config.lora_rank},  # every direction kept: not spectral
        {"alpha": alpha, "spectrum": [1.0] * model.config.lora_rank},
    ]
    for point in equivalent:
        assert torch.equal(model.next_token_logits(audio, PROMPT, point), want), point
    ids = model.generate_ids_from_embeddings(audio, PROMPT, alpha, 2, MAX_NEW_TOKENS)
    assert model.generate_ids_from_embeddings(audio, PROMPT, {"alpha": alpha}, 2, MAX_NEW_TOKENS) == ids


def test_plain_rows_keep_their_exact_numbers_beside_recipe_rows(model, audio):
    rows = [audio[0], audio[1], audio[0]]
    plain = model.next_token_logits(rows, PROMPT, [0.5, 0.8, 0.2])
    for neighbour in ({"rank": 2}, {"spectrum": [0.5, 1]}, {"layers": [0.3, 0.9], "modules": {"o_proj": 0}}):
        mixed = model.next_token_logits(rows, PROMPT, [0.5, 0.8, neighbour])
        assert torch.equal(mixed[:2], plain[:2]), neighbour


def test_plain_rows_are_scaled_by_their_alpha_itself():
    merge = RowMerge.from_points([0.1, 0.7], num_layers=3, rank=4, device="cpu")
    assert torch.equal(merge.scales, torch.tensor([0.1, 0.7])[:, None, None].expand(2, 3, 4))
    assert merge.spectral is None


# --- every entry point takes recipes, and refuses bad ones by name ---------------------------------------


def test_generate_takes_floats_dicts_and_recipes_in_one_call(model):
    clips = [np.random.default_rng(seed).uniform(-0.3, 0.3, 16000).astype(np.float32) for seed in (0, 1, 2)]
    points = [0.5, {"layers": "linear:0.2:1"}, MergeRecipe(alpha=0.8, rank=2)]
    texts = model.generate(clips, PROMPT, points, num_beams=1, max_new_tokens=MAX_NEW_TOKENS)
    assert texts == [
        model.generate([c], PROMPT, [p], num_beams=1, max_new_tokens=MAX_NEW_TOKENS)[0]
        for c, p in zip(clips, points, strict=True)
    ]


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"layers": [1, 1, 1]}, "layers lists 3 multipliers but the model has 2 decoder layers"),
        ({"rank": 5}, r"rank 5 is outside 1\.\.4 \(the LoRA rank\)"),
        ({"modules": {"up_proj": 1}}, "unknown module 'up_proj'"),
        ({"alpha": 0.9, "layers": [1, 1.5]}, r"layers\[1\] 1\.5 x modules\.q_proj 1 gives 1\.35"),
    ],
)
def test_the_model_refuses_bad_recipes_before_running(model, audio, point, message):
    with pytest.raises(AlphaError, match=f"alpha of row 1: .*{message}"):
        model.generate_ids_from_embeddings(audio, PROMPT, [0.5, point], 1, 2)
    with pytest.raises(AlphaError, match=message):
        model.next_token_logits(audio, PROMPT, point)
    with pytest.raises(AlphaError, match=message):
        model.check_grid_point(point)


def test_the_engine_serves_recipe_rows_and_refuses_bad_ones_at_submit(model):
    clip = np.random.default_rng(3).uniform(-0.3, 0.3, 160000).astype(np.float32)
    settings = GenerationSettings(num_beams=1, max_new_tokens=6)
    points = [0.5, {"alpha": 0.5}, {"modules": {"k_proj": 0}}, MergeRecipe(spectrum=[1, 0.5])]
    engine = Engine(model, inline=True)
    answers = engine.answer_many([([clip], PROMPT, p) for p in points], settings=settings)
    assert answers == [model.generate([clip], PROMPT, [p], num_beams=1, max_new_tokens=6)[0] for p in points]
    assert answers[0] == answers[1]
    with pytest.raises(AlphaError, match="but the model has 2 decoder layers"):
        engine.submit([clip], PROMPT, {"layers": [1, 1, 1]}, settings=settings)
    future = engine.submit([clip], PROMPT, {"alpha": 0.25}, settings=settings)
    engine._drain_in_caller()
    assert future.result() == model.generate([clip], PROMPT, [0.25], num_beams=1, max_new_tokens=6)[0]


def test_a_copied_model_weighs_spectra_with_its_own_state(model, audio):
    want = model.next_token_logits(audio, PROMPT, {"spectrum": [0.5, 1, 0.25]})
    twin = copy.deepcopy(model)
    with model.row_alphas.applied(torch.tensor([1.0, 1.0])):  # the original is busy in this thread
        assert torch.equal(twin.next_token_logits(audio, PROMPT, {"spectrum": [0.5, 1, 0.25]}), want)


def test_check_grid_point_knows_the_models_shape(model):
    assert model.check_grid_point({"alpha": 0.4}) == 0.4
    assert check_grid_point({"layers": [0.5] * 3}) == MergeRecipe(layers=[0.5] * 3)  # fine without a model...
    with pytest.raises(AlphaError, match="decoder layers"):
        model.check_grid_point({"layers": [0.5] * 3})  # ... not for this one
