"""The whole model against the golden target: formula weights in, upstream's numbers and answers out.

This is the proof that prompt building, splicing, the LLM with LoRA at each alpha, greedy decoding
and (transformers-4.44) beam search compute what NatureLM-audio computes. Skips where ../shared is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.golden_formula import golden_available

if not golden_available():
    pytest.skip("../shared/reference/golden is not present", allow_module_level=True)

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from naturelm_core.encoder import AudioEncoder
from naturelm_core.model import NatureLM
from naturelm_core.prompting import apply_template, tokenize_prompt
from tests.golden_formula import GOLDEN_DIR, formula_tensor, golden_waveforms, load_expected, upstream_preprocess
from tests.golden_model import GOLDEN_LLM_HIDDEN_SIZE, golden_audio_state_dict, golden_config

PUBLISHED_LLM_PREFIX = "llama_model."
MAX_NEW_TOKENS = 12
LOGIT_ATOL = 1e-3


def _formula(name: str, shape: torch.Size) -> torch.Tensor:
    return torch.from_numpy(formula_tensor(name, tuple(shape)))


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_expected()


@pytest.fixture(scope="module")
def model() -> NatureLM:
    """The reduced NatureLM-audio with every weight from the README's formula, in float32."""
    torch.manual_seed(0)  # module initialisers run before the formula overwrites every tensor
    config = golden_config()
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN_DIR / "llm")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    llm = LlamaForCausalLM(LlamaConfig.from_pretrained(GOLDEN_DIR / "llm"))
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Base weights under transformers' names, embedding and lm_head at the resized [529, 64].
    llm.load_state_dict({name: _formula(name, t.shape) for name, t in llm.state_dict().items()})
    audio_encoder = AudioEncoder(config, GOLDEN_LLM_HIDDEN_SIZE)
    audio_encoder.load_state_dict(golden_audio_state_dict(config))
    model = NatureLM(config, audio_encoder, llm, tokenizer)
    # LoRA under the published names, which are ours with "llama_model." in front.
    lora_names = [name for name in model.llama_model.state_dict() if ".lora_" in name]
    assert len(lora_names) == 16
    lora = {
        name: _formula(PUBLISHED_LLM_PREFIX + name, model.llama_model.state_dict()[name].shape) for name in lora_names
    }
    result = model.llama_model.load_state_dict(lora, strict=False)
    assert not result.unexpected_keys
    assert not [name for name in result.missing_keys if ".lora_" in name]
    return model


@pytest.fixture(scope="module")
def audio_embeddings(model) -> torch.Tensor:
    """[3, 29, 64]: the three golden waveforms through upstream's preprocessing and our encoder."""
    return model.encode_audio(np.stack([upstream_preprocess(w) for w in golden_waveforms()]))


def _prompts(expected: dict) -> list[str]:
    return [entry["prompt"] for entry in expected["prompts"]]


def test_the_llm_uses_llama3_scaled_rope_frequencies(model, expected):
    want = torch.tensor(expected["model"]["rope_inv_freq_after_llama3_scaling"])
    torch.testing.assert_close(model.llm.model.rotary_emb.inv_freq.float(), want, rtol=1e-6, atol=0)


def test_special_ids_and_stop_ids(model, expected):
    assert model.tokenizer.pad_token_id == expected["tokenizer"]["pad_token_id"]
    assert model.tokenizer.bos_token_id == expected["tokenizer"]["bos_token_id"]
    assert model.stop_ids == expected["tokenizer"]["eos_token_ids"]
    assert model.llm.lm_head.weight.shape[0] == expected["model"]["llama"]["embedding_rows"]


def test_templated_prompts_and_piece_token_ids(model, expected):
    for entry in expected["prompts"]:
        assert apply_template(entry["prompt"], model.config.prompt_template) == entry["templated"]
        assert (
            tokenize_prompt(model.tokenizer, entry["prompt"], model.config.prompt_template) == entry["piece_token_ids"]
        )


def test_sequence_lengths_include_bos_and_29_audio_embeddings(model, expected):
    embeddings = torch.zeros(29, GOLDEN_LLM_HIDDEN_SIZE)
    for entry in expected["prompts"]:
        batch = model.build_inputs([[embeddings]], entry["prompt"])
        assert batch.inputs_embeds.shape[1] == entry["sequence_length"]
        torch.testing.assert_close(batch.position_ids[0], torch.arange(entry["sequence_length"]))
        torch.testing.assert_close(batch.inputs_embeds[0, 0], model.llm.model.embed_tokens.weight[512])


@pytest.mark.parametrize("prompt_index", [0, 1])
def test_first_step_logits_from_the_recorded_audio_embeddings(model, expected, prompt_index):
    """Starts from expected.json's audio embeddings, so only prompt, splice, LLM and alpha are under test."""
    embeddings = torch.tensor(expected["waveforms"][0]["audio_embeddings"]["full"])
    alphas = ["0.0", "0.5", "1.0"]
    prompt = _prompts(expected)[prompt_index]
    logits = model.next_token_logits([[embeddings]] * 3, prompt, [float(a) for a in alphas])
    want = torch.tensor([expected["first_step_logits"][str(prompt_index)][a] for a in alphas])
    assert logits.shape == (3, 529)
    torch.testing.assert_close(logits, want, atol=LOGIT_ATOL, rtol=0)


def test_first_step_logits_from_our_encoder(model, expected, audio_embeddings):
    logits = model.next_token_logits([[audio_embeddings[0]]] * 3, _prompts(expected)[0], [0.0, 0.5, 1.0])
    want = torch.tensor([expected["first_step_logits"]["0"][a] for a in ("0.0", "0.5", "1.0")])
    torch.testing.assert_close(logits, want, atol=LOGIT_ATOL, rtol=0)


def golden_batch(expected: dict, audio_embeddings: list, table: str) -> tuple[list, list[str], list[float]]:
    """The 18 rows of a golden table (3 waveforms x 2 prompts x 3 alphas) as (audio rows, prompts, alphas)."""
    rows = expected[table]
    prompts = _prompts(expected)
    return (
        [[audio_embeddings[row["waveform"]]] for row in rows],
        [prompts[row["prompt"]] for row in rows],
        [row["alpha"] for row in rows],
    )


@pytest.mark.parametrize("table,num_beams", [("generations", 1), ("beam_search", 2)])
def test_all_18_rows_in_one_mixed_batch(model, expected, audio_embeddings, table, num_beams):
    """3 waveforms x 2 prompts x 3 alphas in one call: every row's ids and text exactly as upstream's."""
    args = (*golden_batch(expected, audio_embeddings, table), num_beams, MAX_NEW_TOKENS)
    ids = model.generate_ids_from_embeddings(*args)
    texts = model.generate_from_embeddings(*args)
    assert ids == [row["token_ids"] for row in expected[table]]
    assert texts == [row["text"] for row in expected[table]]


def test_a_finished_beam_returns_the_first_stop_id_whichever_it_generated(expected):
    """Guards that the golden rows above exercise 4.44's rule (transformers 5.x returns the generated id)."""
    finished = [row["token_ids"] for row in expected["beam_search"] if row["stopped_on_eos"]]
    assert finished
    assert all(ids[-1] == 513 for ids in finished)


def test_generate_from_waveforms_pads_and_clamps_like_upstream(model, expected):
    """generate() itself zero-pads w1 (4 s) to 10 s and clamps w2 (peaks at 1.25), as upstream's processor does.

    w2 is 12 s: cutting recordings into windows is the caller's job, so we pass its first 10 s.
    """
    alphas = [0.0, 0.5, 1.0]
    rows = [
        next(r for r in expected["generations"] if (r["waveform"], r["prompt"], r["alpha"]) == (index, 0, alpha))
        for index, alpha in enumerate(alphas)
    ]
    audio = [waveform[:160000] for waveform in golden_waveforms()]
    texts = model.generate(audio, _prompts(expected)[0], alphas, num_beams=1, max_new_tokens=MAX_NEW_TOKENS)
    assert texts == [row["text"] for row in rows]
