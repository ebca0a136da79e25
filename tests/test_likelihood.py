"""Label scoring: every log-likelihood is the teacher-forced one, at each row's own alpha or recipe, in any batching."""

from __future__ import annotations

import contextlib
import copy
import math
import random

import numpy as np
import pytest
import torch

from naturelm_core.label_scores import MAX_LABEL_TOKENS, Candidates, LabelError, LabelScores
from tests.test_alpha import merged_llm
from tests.test_recipes_model import formula_llm, random_recipe

PROMPTS = ["What is the common name for the focal species in the audio?", "Caption the audio."]
LABELS = ["Humpback", "Humpback Whale", "American Robin", "Killer Whale", "none", "Spring Peeper, Pseudacris"]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def unit_model(tiny_model):
    """lm_head scaled so logits are O(1): the tiny model's +-30 logits leave ~1e-5 of float32 rounding between
    any two correct computations (tests/test_alpha.py), so 1e-5 in float32 is checked where it can hold."""
    scaled = copy.deepcopy(tiny_model)
    with torch.no_grad():
        scaled.llm.get_output_embeddings().weight.mul_(1 / 32)
    return scaled


@pytest.fixture(scope="module")
def model64(tiny_model):
    return copy.deepcopy(tiny_model).double()


@pytest.fixture(scope="module")
def audio():
    """Two rows of 29 audio embeddings at the tiny LLM's width."""
    generator = torch.Generator().manual_seed(3)
    return [[torch.randn(29, 64, generator=generator)] for _ in range(2)]


def as_dtype(audio, model):
    return [[block.to(model.dtype) for block in row] for row in audio]


def teacher_forced(model, blocks, prompt: str, label: str, point=None, llm=None) -> list[float]:
    """Log-probs of the label's tokens, then of the end (any stop id), from ONE forward over prompt + label,
    without a cache: `llm` (a plain Llama with merged weights), or the model's own LLM at `point`."""
    llm = llm or model.llm
    batch = model.build_inputs([blocks], prompt)
    ids = model.tokenizer(label, add_special_tokens=False)["input_ids"]
    embeds = torch.cat([batch.inputs_embeds, llm.get_input_embeddings()(torch.tensor([ids]))], dim=1)
    length = embeds.shape[1]
    merged = contextlib.nullcontext() if point is None else model.row_alphas.applied(model.row_merge(point, 1))
    with torch.no_grad(), merged:
        logits = llm(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, length, dtype=torch.long),
            position_ids=torch.arange(length)[None],
        ).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    start = batch.inputs_embeds.shape[1] - 1  # the position whose logits predict the label's first token
    tokens = [float(log_probs[start + j, token]) for j, token in enumerate(ids)]
    return [*tokens, float(torch.logsumexp(log_probs[start + len(ids), model.stop_ids], dim=0))]


def scored(scores: LabelScores, label: str) -> list[float]:
    return [*scores.tokens[label].log_probs, scores.tokens[label].end_log_prob]


def assert_teacher_forced(model, audio, points, scores, atol: float, llms=None) -> None:
    for row, (blocks, prompt, point) in enumerate(zip(audio, PROMPTS, points, strict=True)):
        for label in LABELS:
            llm = None if llms is None else llms[row]
            want = teacher_forced(model, blocks, prompt, label, None if llm else point, llm)
            np.testing.assert_allclose(scored(scores[row], label), want, atol=atol, rtol=0)
            assert scores[row].log_likelihoods[label] == pytest.approx(math.fsum(want), abs=atol)


# --- each number is the teacher-forced one ----------------------------------------------------------------


@pytest.mark.parametrize("points", [[0.3, 1.0], [0.0, {"layers": "linear:0.2:1", "rank": 2}]])
def test_each_log_likelihood_is_the_teacher_forced_one_in_float32(unit_model, audio, points):
    """Two prompts of different lengths (left padding), passes of 4 that mix rows and label lengths."""
    scores = unit_model.score_labels_from_embeddings(audio, PROMPTS, LABELS, points, max_candidates_per_pass=4)
    assert_teacher_forced(unit_model, audio, points, scores, atol=1e-5)


def test_in_float64_they_agree_to_rounding(model64, audio):
    points = [0.6, {"spectrum": [0.5, 1.0, 0.25]}]
    audio = as_dtype(audio, model64)
    scores = model64.score_labels_from_embeddings(audio, PROMPTS, LABELS, points, max_candidates_per_pass=5)
    assert_teacher_forced(model64, audio, points, scores, atol=1e-9)


def test_the_production_model_agrees_to_float32_rounding(model, audio):
    scores = model.score_labels_from_embeddings(audio, PROMPTS, LABELS, [0.5, 1.0], max_candidates_per_pass=2)
    assert_teacher_forced(model, audio, [0.5, 1.0], scores, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_an_alpha_scores_as_explicitly_interpolated_weights_do(model64, audio, alpha):
    """W + alpha * s * B A written into a plain Llama (no LoRA at all), teacher-forced."""
    audio = as_dtype(audio, model64)
    scores = model64.score_labels_from_embeddings(audio, PROMPTS, LABELS, alpha)
    merged = merged_llm(model64, alpha)
    assert_teacher_forced(model64, audio, [alpha] * 2, scores, atol=1e-9, llms=[merged, merged])


def test_a_merge_recipe_row_scores_as_its_formula_weights_do(model64, audio):
    recipes = [random_recipe("combined", seed, model64.num_layers, model64.config.lora_rank) for seed in (0, 1)]
    audio = as_dtype(audio, model64)
    scores = model64.score_labels_from_embeddings(audio, PROMPTS, LABELS, recipes)
    llms = [formula_llm(model64, recipe) for recipe in recipes]
    assert_teacher_forced(model64, audio, recipes, scores, atol=1e-9, llms=llms)


def test_the_alphas_really_change_the_scores(model, audio):
    """Guards the equalities above against a path that silently ran every row at one alpha."""
    low, high = model.score_labels_from_embeddings(audio[:1] * 2, PROMPTS[0], LABELS, [0.0, 1.0])
    assert max(abs(low.log_likelihoods[label] - high.log_likelihoods[label]) for label in LABELS) > 0.1


# --- batching, order and chunking change nothing ---------------------------------------------------------------


def test_each_row_of_a_mixed_batch_scores_as_it_does_alone(unit_model, audio):
    model = unit_model
    points = [0.0, 0.25, {"alpha": 0.7, "layers": "linear:0.2:1"}, 1.0, {"modules": {"k_proj": 0}}]
    rows = [audio[i % 2] for i in range(len(points))]
    prompts = [PROMPTS[i % 2] for i in range(len(points))]
    together = model.score_labels_from_embeddings(rows, prompts, LABELS, points, max_candidates_per_pass=7)
    for row, point in enumerate(points):
        (alone,) = model.score_labels_from_embeddings([rows[row]], prompts[row], LABELS, [point])
        for label in LABELS:
            np.testing.assert_allclose(scored(together[row], label), scored(alone, label), atol=1e-5, rtol=0)


def test_label_order_is_irrelevant(model, audio):
    shuffled = random.Random(0).sample(LABELS, len(LABELS))
    (given,) = model.score_labels_from_embeddings(audio[:1], PROMPTS[0], LABELS, 0.5, max_candidates_per_pass=2)
    (other,) = model.score_labels_from_embeddings(audio[:1], PROMPTS[0], shuffled, 0.5, max_candidates_per_pass=2)
    assert list(other.log_likelihoods) == shuffled  # results keep the caller's order
    # Another order puts other labels in each pass of two: float32 sums in another order. Log-likelihoods near
    # -109 then differed by 2.5e-5 (CI, 2026-12-07): equal to a float32 rounding of their size, not to 1e-5.
    for label in LABELS:
        assert other.log_likelihoods[label] == pytest.approx(given.log_likelihoods[label], rel=1e-6, abs=1e-5)
        assert other.probabilities[label] == pytest.approx(given.probabilities[label], rel=1e-4, abs=1e-6)


def test_chunked_scoring_of_500_labels_equals_unchunked(model, audio):
    names = ["Robin", "Humpback Whale", "Wren", "Spring Peeper", "Common Raven"]
    labels = [f"{names[i % len(names)]} {i}" + " call" * (i % 4) for i in range(500)]
    chunked = model.score_labels_from_embeddings(audio, PROMPTS, labels, [0.4, 0.9], max_candidates_per_pass=37)
    whole = model.score_labels_from_embeddings(audio, PROMPTS, labels, [0.4, 0.9], max_candidates_per_pass=1000)
    for row in range(2):
        assert len(chunked[row].log_likelihoods) == 500
        np.testing.assert_allclose(
            list(chunked[row].log_likelihoods.values()), list(whole[row].log_likelihoods.values()), atol=1e-4, rtol=0
        )
        np.testing.assert_allclose(
            list(chunked[row].probabilities.values()), list(whole[row].probabilities.values()), atol=1e-5, rtol=0
        )


# --- what the numbers mean ------------------------------------------------------------------------------------


def test_probabilities_are_the_softmax_of_the_log_likelihoods(model, audio):
    for scores in model.score_labels_from_embeddings(audio, PROMPTS, LABELS, [0.2, 0.8]):
        assert math.fsum(scores.probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        assert math.fsum(scores.normalized_probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        values = torch.tensor(list(scores.log_likelihoods.values()), dtype=torch.float64)
        np.testing.assert_allclose(list(scores.probabilities.values()), torch.softmax(values, 0).numpy(), atol=1e-12)
        lengths = torch.tensor([len(scores.tokens[label].ids) + 1 for label in LABELS], dtype=torch.float64)
        normalized = torch.softmax(values / lengths, 0).numpy()
        np.testing.assert_allclose(list(scores.normalized_probabilities.values()), normalized, atol=1e-12)
        assert scores.best == max(LABELS, key=scores.log_likelihoods.__getitem__)
        assert scores.to_dict()["tokens"]["Humpback"]["pieces"] == ["Hum", "pback"]


def test_a_prefix_does_not_win_for_being_a_prefix(model, audio):
    """The end of the answer is scored: "Humpback" alone is not the sum of a prefix of "Humpback Whale"."""
    (scores,) = model.score_labels_from_embeddings(audio[:1], PROMPTS[0], LABELS, 1.0)
    short, long = scores.tokens["Humpback"], scores.tokens["Humpback Whale"]
    assert short.ids == long.ids[:2]
    assert short.log_probs == pytest.approx(long.log_probs[:2], abs=1e-5)
    assert short.log_likelihood == pytest.approx(math.fsum(short.log_probs) + short.end_log_prob)
    assert short.end_log_prob < 0


def single_token_labels(tokenizer) -> list[str]:
    """Every vocabulary entry whose text tokenizes back to that one id (and is not blank)."""
    labels = {}
    for token in range(len(tokenizer)):
        text = tokenizer.decode([token])
        if text.strip() and tokenizer(text, add_special_tokens=False)["input_ids"] == [token]:
            labels.setdefault(text, token)
    return list(labels)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_single_token_labels_rank_first_tokens_as_greedy_decoding_does(model, audio, alpha):
    """Over every single-token label: the first token most likely is greedy's first token, and each label's
    first log-prob is the log-softmax of generate's first logits; the end then reorders them (the test above)."""
    labels = single_token_labels(model.tokenizer)
    assert len(labels) > 300
    (scores,) = model.score_labels_from_embeddings(audio[:1], PROMPTS[0], labels, alpha)
    first = {label: scores.tokens[label].log_probs[0] for label in labels}
    greedy = model.generate_ids_from_embeddings(audio[:1], PROMPTS[0], alpha, num_beams=1, max_new_tokens=1)[0][0]
    assert scores.tokens[max(first, key=first.__getitem__)].ids == (greedy,)
    log_softmax = torch.log_softmax(model.next_token_logits(audio[:1], PROMPTS[0], alpha)[0], dim=-1)
    want = [float(log_softmax[scores.tokens[label].ids[0]]) for label in labels]
    np.testing.assert_allclose(list(first.values()), want, atol=1e-5, rtol=0)


# --- inputs --------------------------------------------------------------------------------------------------


def test_audio_paths_or_arrays_are_taken_as_generate_takes_them(model, tmp_path):
    import soundfile

    clips = [np.random.default_rng(seed).uniform(-0.3, 0.3, 16000).astype(np.float32) for seed in (0, 1)]
    path = tmp_path / "clip.wav"
    soundfile.write(path, clips[1], 16000, subtype="FLOAT")
    from_audio = model.score_labels([clips[0], path], PROMPTS[0], LABELS, [0.5, 1.0])
    embeds = model.encode_audio(np.stack([np.pad(c, (0, 144000)) for c in clips]))
    from_embeds = model.score_labels_from_embeddings([[e] for e in embeds], PROMPTS[0], LABELS, [0.5, 1.0])
    for got, want in zip(from_audio, from_embeds, strict=True):
        assert got.log_likelihoods == pytest.approx(want.log_likelihoods, abs=1e-6)


def test_each_row_may_have_its_own_candidate_set(model, audio):
    sets = [LABELS[:2], model.label_candidates(LABELS[2:])]
    rows = model.score_labels_from_embeddings(audio, PROMPTS, sets, [0.5, 0.5])
    assert [list(r.log_likelihoods) for r in rows] == [LABELS[:2], LABELS[2:]]
    (second,) = model.score_labels_from_embeddings(audio[1:], PROMPTS[1], LABELS[2:], 0.5)
    assert rows[1].log_likelihoods == pytest.approx(second.log_likelihoods, rel=1e-6)


def test_work_may_run_between_passes_without_changing_the_scores(model, audio):
    """What the engine does there: answer another request, at another alpha, on the same model."""
    answers = []

    def between() -> None:
        answers.append(model.generate_ids_from_embeddings(audio[:1], PROMPTS[0], 0.1, 1, 3))

    scores = model.score_labels_from_embeddings(audio, PROMPTS, LABELS, [0.3, 1.0], max_candidates_per_pass=5)
    paused = model.score_labels_from_embeddings(
        audio, PROMPTS, LABELS, [0.3, 1.0], max_candidates_per_pass=5, between_passes=between
    )
    assert len(answers) == math.ceil(2 * len(LABELS) / 5) - 1
    assert [s.log_likelihoods for s in paused] == [s.log_likelihoods for s in scores]


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        ([], LabelError, "no candidate labels"),
        (["Robin", "Wren", "Robin"], LabelError, r"'Robin' is listed twice \(positions 0 and 2\)"),
        (["Robin", " "], LabelError, "label 1 is empty"),
        (["Robin", ""], LabelError, "label 1 is empty"),
        (["Robin", "x" * 200], LabelError, f"tokens long; at most {MAX_LABEL_TOKENS} are scored"),
        ("Robin", TypeError, "not one string"),
        (["Robin", 3], TypeError, "label 1 must be a string"),
        ([["Robin"], "Wren"], TypeError, "not a mix"),
        ([["Robin"]] * 3, ValueError, "3 label sets for 2 rows"),
    ],
)
def test_bad_candidate_sets_are_refused_before_the_model_runs(model, audio, labels, error, message):
    with pytest.raises(error, match=message):
        model.score_labels_from_embeddings(audio, PROMPTS, labels, 0.5)


def test_bad_alphas_and_pass_sizes_are_refused(model, audio):
    with pytest.raises(ValueError, match=r"alpha of row 1 is 1\.5"):
        model.score_labels_from_embeddings(audio, PROMPTS, LABELS, [0.5, 1.5])
    with pytest.raises(ValueError, match="max_candidates_per_pass must be at least 1"):
        model.score_labels_from_embeddings(audio, PROMPTS, LABELS, 0.5, max_candidates_per_pass=0)


def test_a_label_of_exactly_the_limit_is_scored(model, audio):
    label = "".join(random.Random(1).choice("qxzjkv") + "9" for _ in range(MAX_LABEL_TOKENS // 2))
    assert len(Candidates.tokenize(model.tokenizer, [label]).token_ids[0]) == MAX_LABEL_TOKENS
    (scores,) = model.score_labels_from_embeddings(audio[:1], PROMPTS[0], [label, "Robin"], 0.5)
    assert len(scores.tokens[label].log_probs) == MAX_LABEL_TOKENS
