"""Beam search's candidates in one pass (naturelm_core.beam_candidates): torch everywhere, the Triton kernel on a
GPU, and here in Triton's interpreter (a child process: TRITON_INTERPRET=1 must be set before Triton is imported).

tests/test_tensor_search.py pins the torch version (log-softmax, beam scores, top-k) to decoding.py's beam search;
the kernel must rank what it ranks: the same indices, scores to float32 rounding, and the tiny model's static beam
search must give the same answers with it on and off.
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core.beam_candidates import BLOCK, candidates, fused_kernel_works
from tests.test_decode_attention import TINY_MODEL_IN_CHILD, _interpret


def test_without_a_gpu_the_fused_kernel_is_not_used():
    assert not fused_kernel_works(torch.device("cpu"))


def test_beam_search_state_asks_the_start_up_check(monkeypatch):
    from naturelm_core import beam_candidates
    from naturelm_core.tensor_search import BeamSearchState

    asked = []
    monkeypatch.setattr(beam_candidates, "fused_kernel_works", lambda device: asked.append(device) or True)
    state = BeamSearchState(3, 2, 5, [7])
    assert state.fused and asked == [torch.device("cpu")]


def _logits(items: int, beams: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits with a block of -inf in one row and a dead beam (-1e9, as beam search starts) in one item."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(items * beams, vocab, generator=generator) * 4
    logits[1, : min(vocab, BLOCK)] = -torch.inf
    logits[1, -1] = 0.5  # the row keeps a finite logit past the -inf block
    beam_scores = -torch.rand(items, beams, generator=generator) * 3
    beam_scores[0, 1:] = -1e9
    return logits, beam_scores


def test_the_kernel_in_tritons_interpreter_ranks_what_torch_ranks():
    out = _interpret(
        """
        import torch
        from naturelm_core.beam_candidates import BLOCK, candidates
        from tests.test_beam_candidates import _logits
        checked = 0
        # Llama's vocabulary cut to three and a bit blocks, one block's worth, a tiny model's; 1, 2 and 4 beams
        for items, beams, vocab, count in ((3, 2, 3 * BLOCK + 123, 6), (2, 4, BLOCK, 8), (4, 1, 300, 2),
                                           (2, 2, 77, 4)):
            logits, beam_scores = _logits(items, beams, vocab, seed=vocab)
            expected = candidates(logits, beam_scores, count, fused=False)
            got = candidates(logits, beam_scores, count, fused=True)
            assert torch.equal(got[1], expected[1]), (vocab, got[1], expected[1])
            torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-6)
            checked += 1
        print("ok", checked)
        """
    )
    assert out.strip() == "ok 4"


def test_a_row_of_minus_infinity_but_one_logit_sums_to_that_logit_in_the_interpreter():
    """A block of -inf has maximum -inf: its sum must be 0 (not exp(nan)) so the row's normaliser stays finite,
    and the one finite logit is a log-probability of 0."""
    out = _interpret(
        """
        import torch
        from naturelm_core.beam_candidates import BLOCK, candidates
        logits = torch.full((1, 2 * BLOCK + 5), -torch.inf)
        logits[0, BLOCK + 3] = 2.0
        scores, indices = candidates(logits, torch.zeros(1, 1), 1, fused=True)
        assert scores.tolist() == [[0.0]] and indices.tolist() == [[BLOCK + 3]], (scores, indices)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_static_beam_search_through_the_kernel_gives_the_torch_paths_answers():
    """The tiny model's static decoding with the kernel forced on (in the interpreter) against the same with it
    off, at 2 and 3 beams, and the kernel is what ran."""
    out = _interpret(
        """
        from naturelm_core import beam_candidates
        calls = []
        kernel = beam_candidates._fused
        beam_candidates._fused = lambda *args: calls.append(1) or kernel(*args)

        def switch(fused):
            beam_candidates.fused_kernel_works = lambda device: fused

        same_ids_with_the_kernel_on_and_off(switch, (2, 3))
        assert calls, "the kernel never ran"
        print("ok", len(calls))
        """,
        prelude=TINY_MODEL_IN_CHILD,
    )
    assert out.strip().startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize(("items", "beams", "count"), [(1, 2, 6), (176, 2, 6), (64, 4, 12)])
def test_the_fused_kernel_ranks_what_torch_ranks_on_a_gpu(items, beams, count):
    device = torch.device("cuda")
    assert fused_kernel_works(device)
    logits, beam_scores = (t.to(device) for t in _logits(items, beams, 128257, seed=items))
    expected = candidates(logits, beam_scores, count, fused=False)
    got = candidates(logits, beam_scores, count, fused=True)
    assert torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-6)
