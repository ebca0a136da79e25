"""NatureLM on the tiny checkpoint: prompts, splicing, left padding, batching and the generate() entry points."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from naturelm_core.config import AUDIO_PROMPT_PREFIX, PROMPT_TEMPLATE
from naturelm_core.loading import load_model
from naturelm_core.prompting import apply_template, assemble_batch, tokenize_prompt
from naturelm_core.tiny import write_tiny_checkpoint

SHORT = "Caption the audio."
LONG = "What is the common name for the focal species in the audio? Answer with the common name only, please."
TWO_WINDOWS = "<Audio><AudioHere></Audio> then <Audio><AudioHere></Audio> Which of the two has the bird?"
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def blocks() -> list[torch.Tensor]:
    """Three different windows' worth of audio embeddings (29 x 64 each)."""
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(29, 64, generator=generator) for _ in range(3)]


def _alone_and_together(model, audio, prompts, alphas, num_beams):
    alone = [
        model.generate_ids_from_embeddings([a], [p], [x], num_beams, MAX_NEW_TOKENS)[0]
        for a, p, x in zip(audio, prompts, alphas, strict=True)
    ]
    together = model.generate_ids_from_embeddings(audio, prompts, alphas, num_beams, MAX_NEW_TOKENS)
    return alone, together


# --- prompt and splice ------------------------------------------------------------------------------


def test_the_audio_prefix_is_added_only_when_absent():
    assert apply_template("Caption it. \n", "<{}>") == f"<{AUDIO_PROMPT_PREFIX}Caption it.>"
    # Stripped after prepending, as upstream does: a leading space survives between prefix and text.
    assert apply_template(" Caption it.", "<{}>") == f"<{AUDIO_PROMPT_PREFIX} Caption it.>"
    with_prefix = f"{AUDIO_PROMPT_PREFIX}Caption it."
    assert apply_template(with_prefix, "<{}>") == f"<{with_prefix}>"
    # A placeholder written without the trailing space still counts: no second one is added (upstream added one).
    assert apply_template("<Audio><AudioHere></Audio>\nHi", "{}") == "<Audio><AudioHere></Audio>\nHi"
    assert apply_template("Audio: <Audio><AudioHere></Audio>\nLabel:", "{}").count("<AudioHere>") == 1


def test_special_token_strings_become_single_ids_and_no_bos_is_added(model):
    tokenizer = model.tokenizer
    first, second = tokenize_prompt(tokenizer, SHORT, PROMPT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert first[0] == ids[0]
    assert ids[1] in first
    assert ids[2] in second
    assert tokenizer.bos_token_id not in first + second
    assert tokenizer.decode(first) == "<|start_header_id|>user<|end_header_id|>\n\n<Audio>"
    assert tokenizer.decode(second) == (
        "</Audio> Caption the audio.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_audio_blocks_are_spliced_at_their_placeholders_in_order(model, blocks):
    pieces = tokenize_prompt(model.tokenizer, TWO_WINDOWS, model.config.prompt_template)
    assert len(pieces) == 3
    batch = model.build_inputs([[blocks[0], blocks[1]]], TWO_WINDOWS)
    embed = model.llm.get_input_embeddings().weight
    sequence = batch.inputs_embeds[0]
    start = 1 + len(pieces[0])
    assert sequence.shape[0] == 1 + len(pieces[0]) + 29 + len(pieces[1]) + 29 + len(pieces[2])
    assert torch.equal(sequence[0], embed[model.tokenizer.bos_token_id])
    assert torch.equal(sequence[1:start], embed[pieces[0]])
    assert torch.equal(sequence[start : start + 29], blocks[0])
    second = start + 29 + len(pieces[1])
    assert torch.equal(sequence[start + 29 : second], embed[pieces[1]])
    assert torch.equal(sequence[second : second + 29], blocks[1])


def test_placeholder_and_block_counts_must_match(model, blocks):
    with pytest.raises(ValueError, match=r"row 1: the prompt has 2 <AudioHere> placeholder\(s\) but 1 audio"):
        model.generate_from_embeddings([[blocks[0], blocks[1]], [blocks[2]]], TWO_WINDOWS, 0.5)
    with pytest.raises(ValueError, match=r"row 0: the prompt has 1 <AudioHere> placeholder\(s\) but 2 audio"):
        model.generate_from_embeddings([[blocks[0], blocks[1]]], SHORT, 0.5)
    with pytest.raises(TypeError, match="list of"):
        model.generate_from_embeddings([blocks[0]], SHORT, 0.5)


def test_a_multi_window_prompt_generates_and_depends_on_the_window_order(model, blocks):
    forward, backward = model.generate_ids_from_embeddings(
        [[blocks[0], blocks[1]], [blocks[1], blocks[0]]], TWO_WINDOWS, 1.0, 1, MAX_NEW_TOKENS
    )
    assert len(forward) == MAX_NEW_TOKENS or forward[-1] in model.stop_ids
    assert forward != backward


def test_left_padding_puts_real_tokens_last_and_counts_positions_from_them():
    """Token t embeds as [t, t, t]; pad id 0. Row 0: BOS 9, text [1]; row 1: BOS 9, [2], audio (2 x 5.0), [3]."""
    embed = torch.nn.Embedding(10, 3)
    with torch.no_grad():
        embed.weight.copy_(torch.arange(10.0)[:, None].expand(10, 3))
    audio = torch.full((2, 3), 5.0)
    batch = assemble_batch(embed, 9, 0, [([[1]], []), ([[2], [3]], [audio])])
    assert batch.attention_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 0, 0, 0, 1], [0, 1, 2, 3, 4]]
    assert batch.inputs_embeds[:, :, 0].tolist() == [[0, 0, 0, 9, 1], [9, 2, 5, 5, 3]]
    doubled = batch.repeat_rows(2)
    assert doubled.attention_mask.tolist() == [[0, 0, 0, 1, 1]] * 2 + [[1, 1, 1, 1, 1]] * 2


def test_a_batch_of_many_rows_equals_its_rows_built_alone(model, blocks):
    """One lookup and one write for the whole batch's text must place every row's tokens as alone."""
    prompts = [SHORT, TWO_WINDOWS, "Which bird?", SHORT]
    rows = [[blocks[0]], [blocks[1], blocks[2]], [blocks[2]], [blocks[1]]]
    batch = model.build_inputs(rows, prompts)
    for row, (audio, prompt) in enumerate(zip(rows, prompts, strict=True)):
        alone = model.build_inputs([audio], prompt)
        length = alone.inputs_embeds.shape[1]
        assert torch.equal(batch.inputs_embeds[row, -length:], alone.inputs_embeds[0])
        assert batch.attention_mask[row].sum() == length
        assert torch.equal(batch.position_ids[row, -length:], alone.position_ids[0])


# --- batching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 2])
def test_prompts_of_different_lengths_batch_like_each_alone(model, blocks, num_beams):
    audio = [[blocks[0]], [blocks[1]], [blocks[2]]]
    prompts = [SHORT, LONG, "Is there an animal in this recording? Answer yes or no."]
    lengths = {model.build_inputs([[blocks[0]]], prompt).inputs_embeds.shape[1] for prompt in prompts}
    assert len(lengths) == 3
    alone, together = _alone_and_together(model, audio, prompts, [0.5] * 3, num_beams)
    assert together == alone


@pytest.mark.parametrize("num_beams", [1, 2])
def test_rows_at_different_alphas_batch_like_each_alone(model, blocks, num_beams):
    alphas = [0.0, 1.0, 0.25, 0.5, 1.0]
    audio = [[blocks[0]], [blocks[0]], [blocks[1]], [blocks[0]], [blocks[2]]]
    prompts = [SHORT, SHORT, LONG, SHORT, LONG]
    alone, together = _alone_and_together(model, audio, prompts, alphas, num_beams)
    assert together == alone
    assert len({str(ids) for ids in together[:2] + together[3:4]}) == 3  # same input, three alphas, three answers


def test_texts_are_the_decoded_ids_without_special_tokens(model, blocks):
    audio = [[blocks[0]], [blocks[1]]]
    ids = model.generate_ids_from_embeddings(audio, SHORT, [0.0, 1.0], 2, MAX_NEW_TOKENS)
    texts = model.generate_from_embeddings(audio, SHORT, [0.0, 1.0], 2, MAX_NEW_TOKENS)
    assert texts == model.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert all(len(row) <= MAX_NEW_TOKENS for row in ids)


def test_generation_stops_on_the_llms_stop_ids(model):
    """Llama-3.1's end_of_text / eom_id / eot_id (the tiny model's 513 / 520 / 521); never token 2."""
    assert model.stop_ids == model.tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])


# --- generate() from audio --------------------------------------------------------------------------


def test_short_clips_are_zero_padded_and_loud_ones_clamped_like_upstream(model):
    rng = np.random.default_rng(0)
    short = rng.uniform(-1.4, 1.4, 16000 * 3).astype(np.float32)
    padded = np.zeros(160000, dtype=np.float32)
    padded[: short.size] = np.clip(short, -1, 1)
    assert model.generate([short, padded], SHORT, 0.5, 1, MAX_NEW_TOKENS) == model.generate(
        [padded, padded], SHORT, 0.5, 1, MAX_NEW_TOKENS
    )


def test_a_path_gives_the_same_answer_as_its_samples(model, tmp_path):
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    assert model.generate(str(path), SHORT, 0.5, 1, MAX_NEW_TOKENS) == model.generate(
        [samples], SHORT, 0.5, 1, MAX_NEW_TOKENS
    )


def test_audio_longer_than_one_window_points_to_the_windowing_helper(model):
    with pytest.raises(ValueError, match=r"longer than one 10 s model window.*naturelm_core\.audio\.windows"):
        model.generate([np.zeros(160001, dtype=np.float32)], SHORT, 0.5)
    with pytest.raises(ValueError, match="1-D"):
        model.generate([np.zeros((2, 16000), dtype=np.float32)], SHORT, 0.5)


# --- argument checks --------------------------------------------------------------------------------


def test_prompts_are_one_per_row_or_one_for_all(model, blocks):
    with pytest.raises(ValueError, match="got 2 prompts for 3 audio rows"):
        model.generate_from_embeddings([[b] for b in blocks], [SHORT, LONG], 0.5)


@pytest.mark.parametrize(
    "options,error,message",
    [
        ({"num_beams": 0}, ValueError, "num_beams"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"do_sample": True}, ValueError, "do_sample=True is not supported"),
        ({"repetition_penalty": 1.2}, ValueError, "repetition_penalty"),
        ({"temperature": 0.7}, TypeError, r"unsupported generation options \['temperature'\]"),
    ],
)
def test_unsupported_generation_options_are_refused_by_name(model, blocks, options, error, message):
    with pytest.raises(error, match=message):
        model.generate_from_embeddings([[blocks[0]]], SHORT, 0.5, **options)


def test_answers_get_transformers_4_clean_up_that_transformers_5_skips_for_bpe(tiny_model):
    from naturelm_core.model import decode_answers

    ids = tiny_model.tokenizer.encode("It 's a Fin Whale , not a seal . Isn't it ?", add_special_tokens=False)
    [text] = decode_answers(tiny_model.tokenizer, [ids])
    assert text == "It's a Fin Whale, not a seal. Isn't it?"
