"""The static-cache decoder on the golden target: upstream's logits and all 18 answers, greedy and beam.

The same checks as tests/test_golden_model.py, with generation forced onto the GPU fast path's code
(run eagerly on the CPU). Skips where ../shared is absent.
"""

from __future__ import annotations

import pytest
import torch

from tests.golden_formula import golden_available

if not golden_available():
    pytest.skip("../shared/reference/golden is not present", allow_module_level=True)

from naturelm_core.static_decoding import StaticDecoding
from tests.test_golden_model import (
    LOGIT_ATOL,
    MAX_NEW_TOKENS,
    _prompts,
    audio_embeddings,
    expected,
    golden_batch,
    model,
)

__all__ = ["audio_embeddings", "expected", "model"]  # module fixtures shared with the eager golden tests


@pytest.fixture
def static_model(model):
    """The golden model decoding statically, with blocks small enough that 12 tokens cross windows."""
    model.decode_with_static_cache = True
    model.static_decoding = StaticDecoding(prompt_block=8, window_block=4)
    yield model
    model.decode_with_static_cache = None
    model.static_decoding = StaticDecoding()


@torch.no_grad()
def test_static_prefill_gives_upstreams_first_step_logits(static_model, expected, audio_embeddings):
    batch = static_model.build_inputs([[audio_embeddings[0]]] * 3, _prompts(expected)[0])
    alphas = torch.tensor([0.0, 0.5, 1.0])
    logits = static_model.static_decoding.decoder(static_model.llm, batch, alphas, 1, 2).prefill()
    want = torch.tensor([expected["first_step_logits"]["0"][a] for a in ("0.0", "0.5", "1.0")])
    torch.testing.assert_close(logits, want, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("table,num_beams", [("generations", 1), ("beam_search", 2)])
def test_all_18_rows_in_one_mixed_batch(static_model, expected, audio_embeddings, table, num_beams):
    rows = expected[table]
    args = (*golden_batch(expected, audio_embeddings, table), num_beams, MAX_NEW_TOKENS)
    assert static_model.generate_ids_from_embeddings(*args) == [row["token_ids"] for row in rows]
    assert static_model.generate_from_embeddings(*args) == [row["text"] for row in rows]
    assert static_model.static_decoding.shapes  # the static path really ran
