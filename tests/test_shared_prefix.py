"""A sweep batch's shared first prompt tokens, copied between rows of one merge (static decoding's eager prefill).

Every prompt opens with the same chat header and `<Audio>` tag; at one merge their keys and values are the
same in every row, so rows after the first of each merge copy them from it instead of computing them. What the rows then
generate must not change: the eager path's ids, logits to float32 rounding, with left padding, beams,
recipes, spectral rows and a prefill paused between chunks.
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core import static_decoding
from naturelm_core.decoding import CachedDecoder
from naturelm_core.llama_step import LlamaStep
from naturelm_core.prompting import assemble_batch
from naturelm_core.static_decoding import StaticDecoding
from tests.static_helpers import audio_rows, generate_ids

PROMPTS = [
    "Caption the audio.",
    "What is the common name for the focal species in the audio? Answer with the common name only.",
    "Is there a bird?",
    "Caption the audio.",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(static_tiny_model):
    return static_tiny_model


@pytest.fixture(scope="module")
def rows() -> list[list[torch.Tensor]]:
    return audio_rows(len(PROMPTS), seed=5)


@pytest.fixture
def shared_calls(monkeypatch) -> list[tuple[int, int]]:
    """(items copied to, shared tokens) of every copy_prefix call, the real method still running."""
    calls: list[tuple[int, int]] = []
    original = LlamaStep.copy_prefix

    def counted(self, state, sources, first, shared):
        calls.append((sources.shape[0], shared))
        return original(self, state, sources, first, shared)

    monkeypatch.setattr(LlamaStep, "copy_prefix", counted)
    return calls


def _ids(model, rows, alphas, num_beams, static: bool, decoding: StaticDecoding | None = None):
    return generate_ids(model, rows, PROMPTS, alphas, num_beams, MAX_NEW_TOKENS, static, decoding)


def _sharing() -> StaticDecoding:
    """Eager prefill (the sweep path) that shares prefixes whatever the batch's size."""
    return StaticDecoding(prompt_block=8, window_block=4, small_prefill_tokens=0, shared_prefix_tokens=0)


def _common_leading_tokens(model, prompts) -> int:
    pieces = [model._prompt_pieces(prompt)[0] for prompt in prompts]
    common = 0
    while all(len(ids) > common for ids in pieces) and len({ids[common] for ids in pieces}) == 1:
        common += 1
    return 1 + common  # BOS, then the first text piece's common ids


def test_a_batch_counts_the_first_tokens_all_its_rows_share(model, rows):
    batch = model.build_inputs(rows, PROMPTS)
    assert batch.shared_prefix == _common_leading_tokens(model, PROMPTS) > 1
    assert batch.repeat_rows(2).shared_prefix == batch.shared_prefix
    text_first = "Listen: <Audio><AudioHere></Audio> which bird?"  # a placeholder written later in the text
    assert model.build_inputs(rows[:2], [PROMPTS[0], text_first]).shared_prefix < batch.shared_prefix


def test_every_row_keeps_its_last_token_to_itself():
    """Identical text-only rows share all but their last token: that token's logits start each answer."""
    embed = torch.nn.Embedding(10, 4)
    batch = assemble_batch(embed, 1, 0, [([[5, 6, 7]], []), ([[5, 6, 7]], []), ([[5, 6, 7, 8]], [])])
    assert batch.shared_prefix == 3  # BOS 5 6 in all; the shortest row keeps its 7
    assert assemble_batch(embed, 1, 0, [([[5, 6]], []), ([[4, 6]], [])]).shared_prefix == 1  # BOS only


@pytest.mark.parametrize("chunked_prefill", [False, True])
@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_shared_prefixes_generate_the_eager_ids(model, rows, num_beams, chunked_prefill, shared_calls, monkeypatch):
    """Repeated alphas (two merges shared by two rows each), left padding (prompts of three lengths); chunked, the
    prefill pauses between items as a sweep batch's does for waiting users, inside both passes and between them."""
    alphas = [0.5, 1.0, 0.5, 1.0]
    eager = _ids(model, rows, alphas, num_beams, static=False)
    pauses: list[None] = []
    if chunked_prefill:
        monkeypatch.setattr(static_decoding, "PAUSE_PREFILL_TOKENS", 1)  # one item per chunk
    model.decode_with_static_cache, model.static_decoding = True, _sharing()
    try:
        between_steps = (lambda: pauses.append(None)) if chunked_prefill else None
        static = model.generate_ids_from_embeddings(
            rows, PROMPTS, alphas, num_beams, MAX_NEW_TOKENS, between_steps=between_steps
        )
    finally:
        model.decode_with_static_cache = None
    assert static == eager
    assert shared_calls == [(2, model.build_inputs(rows, PROMPTS).shared_prefix)]  # rows 2, 3 copy from 0, 1
    assert len(pauses) >= (len(rows) - 1 if chunked_prefill else 0)  # before items 1, 2 and 3 at least


@pytest.mark.parametrize(
    ("alphas", "copied"),
    [
        (
            [
                {"alpha": 0.8, "rank": 2},
                {"layers": "linear:0.2:1", "modules": {"k_proj": 0.5}},
                0.5,
                {"alpha": 0.8, "rank": 2},
            ],
            1,  # the last row, from the first
        ),
        ([{"modules": {"o_proj": 0, "q_proj": 0.25}}, 0.5, {"modules": {"o_proj": 0, "q_proj": 0.25}}, 0.5], 2),
    ],
    ids=["spectral", "recipes"],
)
def test_shared_prefixes_keep_each_rows_merge(model, rows, alphas, copied, shared_calls):
    eager = _ids(model, rows, alphas, 2, static=False)
    assert _ids(model, rows, alphas, 2, static=True, decoding=_sharing()) == eager
    assert [count for count, _ in shared_calls] == [copied]


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1] * 4], ids=["left-padded", "one-length"])
@torch.no_grad()
def test_logits_with_a_shared_prefix_match_the_eager_decoder(model, rows, prompts, shared_calls):
    """The first token's logits (every prompt column feeds them) and four steps after, to float32 rounding;
    a prefix copied to the wrong columns, merge or row moves them by O(1). With left padding the shorter rows'
    prefixes are partly recomputed by the main pass; in a batch of one length (a sweep's) every row's is copied."""
    batch = model.build_inputs(rows, prompts)
    merge = model.row_merge([0.3, {"alpha": 0.9, "layers": [0.5, 1]}, 0.8, 0.3], len(rows))
    with model.row_alphas.applied(merge):
        eager = CachedDecoder(model.llm, batch)
        static = _sharing().decoder(model.llm, batch, merge, 1, 5)
        eager_logits, static_logits = eager.prefill(), static.prefill()
        for _ in range(4):
            assert float((static_logits - eager_logits).norm() / eager_logits.norm()) < 2e-5
            tokens = eager_logits.argmax(dim=-1)
            eager_logits, static_logits = eager.step(tokens), static.step(tokens)
    assert shared_calls == [(1, batch.shared_prefix)]


def test_small_batches_do_not_pay_for_the_grouping(model, rows, shared_calls):
    """At the default threshold a few rows' prefixes are not worth grouping the rows by merge on the host; a
    lower setting of the same batch is."""
    default = StaticDecoding(prompt_block=8, window_block=4, small_prefill_tokens=0)
    _ids(model, rows, [0.5] * 4, 1, static=True, decoding=default)
    assert shared_calls == []
    shared = model.build_inputs(rows, PROMPTS).shared_prefix
    just_enough = StaticDecoding(small_prefill_tokens=0, shared_prefix_tokens=(len(rows) - 1) * shared)
    _ids(model, rows, [0.5] * 4, 1, static=True, decoding=just_enough)
    assert shared_calls == [(len(rows) - 1, shared)]  # one merge: every row after the first copies from it


def test_a_merge_first_met_last_leaves_nothing_to_copy(model, rows, shared_calls):
    """Rows up to the last first-of-its-merge are prefilled whole: here that is every row."""
    alphas = [0.5, 0.5, 0.5, 1.0]
    assert _ids(model, rows, alphas, 1, static=True, decoding=_sharing()) == _ids(model, rows, alphas, 1, static=False)
    assert shared_calls == []
