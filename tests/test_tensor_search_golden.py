"""The tensor searches on the golden target: all 18 of upstream's greedy and beam answers, both decoders.

tests/test_golden_model.py checks them through decoding.py's loops; here the same rows go through
naturelm_core.tensor_search, over the eager decoder and the static-cache one. Skips where ../shared is absent.
"""

from __future__ import annotations

import pytest

from tests.golden_formula import golden_available

if not golden_available():
    pytest.skip("../shared/reference/golden is not present", allow_module_level=True)

from tests.test_golden_model import MAX_NEW_TOKENS, audio_embeddings, expected, golden_batch, model
from tests.test_tensor_search import one_cpu_thread, tensor_search_ids

__all__ = ["audio_embeddings", "expected", "model", "one_cpu_thread"]  # fixtures shared with the other test modules


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("table,num_beams", [("generations", 1), ("beam_search", 2)])
def test_all_18_rows_in_one_mixed_batch(model, expected, audio_embeddings, table, num_beams, static):
    audio, prompts, alphas = golden_batch(expected, audio_embeddings, table)
    ids = tensor_search_ids(model, audio, prompts, alphas, num_beams, MAX_NEW_TOKENS, static)
    assert ids == [row["token_ids"] for row in expected[table]]
