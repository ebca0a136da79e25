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


def _distinct_bf16(rows: int, width: int, seed: int) -> torch.Tensor:
    """bf16 logits without ties within a row (ties are ranked in another order by torch.topk and the kernel,
    as before bf16 logits reached it), row 1 -inf but for its last ten columns of the first block."""
    generator = torch.Generator().manual_seed(seed)
    magnitudes = torch.arange(0x2800, 0x4400, dtype=torch.int32)  # ~1e-14 to 512: 7,168 bf16 numbers each sign
    patterns = torch.cat((magnitudes, magnitudes | 0x8000)).to(torch.int16)  # wraps to the sign bit on purpose
    picks = torch.stack([torch.randperm(patterns.numel(), generator=generator)[:width] for _ in range(rows)])
    logits = patterns[picks].view(torch.bfloat16)
    logits[1, : min(width, BLOCK) - 10] = -torch.inf
    return logits


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


def test_bf16_logits_are_ranked_as_the_float32_numbers_they_equal():
    """The decode step hands its bf16 lm_head output over uncopied: the torch version ranks it exactly as the float32
    copy it used to receive (log-softmax in float32, not in bf16)."""
    logits, beam_scores = _logits(3, 2, 300, seed=5)
    halves = logits.to(torch.bfloat16)
    got = candidates(halves, beam_scores, 4, fused=False)
    expected = candidates(halves.float(), beam_scores, 4, fused=False)
    assert got[0].dtype == torch.float32
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


def test_the_kernel_in_tritons_interpreter_reads_bf16_columns_of_a_wider_tensor():
    """As the decode step's lm_head leaves them: bf16, rows padded to 8-aligned columns (a row stride above V)."""
    out = _interpret(
        """
        import torch
        from naturelm_core.beam_candidates import BLOCK, candidates
        from tests.test_beam_candidates import _distinct_bf16, _logits
        for items, beams, vocab, count in ((3, 2, 3 * BLOCK + 123, 6), (2, 2, 77, 4)):
            _, beam_scores = _logits(items, beams, vocab, seed=vocab)
            columns = _distinct_bf16(items * beams, vocab + 9, seed=vocab)[:, :vocab]
            expected = candidates(columns.float(), beam_scores, count, fused=False)
            got = candidates(columns, beam_scores, count, fused=True)
            assert torch.equal(got[1], expected[1]), (vocab, got[1], expected[1])
            # logits reach 510 here, where float32's spacing is 3e-5: the normaliser's rounding, not a rank
            torch.testing.assert_close(got[0], expected[0], atol=2e-4, rtol=1e-6)
        print("ok")
        """
    )
    assert out.strip() == "ok"


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
