"""Beam search's candidates (the best log-probabilities of every item's beams) in one pass over the logits.

Why: each beam-search step ranks every token of every beam by log_softmax(logits) + the beam's score. In torch
that is a log-softmax writing the whole [rows, V] tensor, an add writing it again and a radix top-k reading it:
at the sweep batch (352 rows x 128,257 float32 logits, 180 MB) 5.4 + ~3.5 + 13.3 ms of a 492 ms batch of GPU
work (H100, benchmarks/gpu.py's profile, 2026-12-07 09:25Z). The candidates are a handful per item (twice the
beams, or more with several stop ids), so one Triton program per block of a row's logits reads the block once
and keeps only its maximum, its sum of exponentials and its best few logits; the row's log-normaliser is then
combined from the blocks' and the few thousand survivors ranked by a small top-k. A block's best few include
every token that can be among its row's best few, so the ranking is the same (to float32 rounding of the
normaliser, which is shared by a row's tokens and cannot reorder them). The torch version is the reference and
runs on the CPU; `fused_kernel_works` checks the kernel against it before it is used.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from naturelm_core import kernel_checks

BLOCK = 4096  # logits per program: 32 blocks per row of Llama-3.1's vocabulary
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the kernel reads them as float32


def candidates(logits: Tensor, beam_scores: Tensor, count: int, fused: bool) -> tuple[Tensor, Tensor]:
    """Each item's `count` best (score, index) over its beams' tokens, best first, as torch.topk returns them.

    `logits` [items x beams, V] (item-major rows), `beam_scores` [items, beams]; a score is the token's
    log-probability plus its beam's score, an index is beam * V + token. Logits of 16 bits are ranked as the
    float32 numbers they equal exactly (the static step hands its bf16 lm_head output over uncopied). With
    `fused`, the Triton kernel reads the logits once, rows at any stride (16- and 32-bit floats; float64 takes
    the torch version).
    """
    items = beam_scores.shape[0]
    if not fused or logits.dtype not in FUSED_DTYPES:
        exact = logits.to(torch.promote_types(logits.dtype, torch.float32))
        scores = torch.log_softmax(exact, dim=-1) + beam_scores.reshape(-1, 1)
        return torch.topk(scores.view(items, -1), count, dim=1)
    return _fused(logits, beam_scores, count)


def _fused(logits: Tensor, beam_scores: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The kernel's per-block summaries, then the rows' log-normalisers and one top-k over the survivors."""
    rows, vocab = logits.shape
    items = beam_scores.shape[0]
    block = min(BLOCK, _power_of_two_at_least(vocab))
    blocks = -(-vocab // block)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    maxima = torch.empty(rows, blocks, device=logits.device, dtype=torch.float32)
    sums = torch.empty_like(maxima)
    best = torch.empty(rows, blocks, count, device=logits.device, dtype=torch.float32)
    tokens = torch.empty(rows, blocks, count, device=logits.device, dtype=torch.int32)
    _kernel()[(rows, blocks)](logits, logits.stride(0), maxima, sums, best, tokens, vocab, BLOCK=block, COUNT=count)
    row_max = maxima.amax(dim=1, keepdim=True)
    # A block of -inf logits has maximum -inf and sum 0: exp(-inf - finite) is 0, so it adds nothing.
    normaliser = row_max + torch.log((sums * torch.exp(maxima - row_max)).sum(dim=1, keepdim=True))
    scores = best - normaliser[..., None] + beam_scores.reshape(rows, 1, 1)
    top_scores, position = torch.topk(scores.view(items, -1), count, dim=1)
    token = tokens.view(items, -1).gather(1, position).long().clamp_(max=vocab - 1)  # see the kernel on -inf
    beam = torch.div(position, blocks * count, rounding_mode="floor")
    return top_scores, beam * vocab + token


def _power_of_two_at_least(value: int) -> int:
    return 1 << (value - 1).bit_length()


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def block_summaries(
        logits, row_stride, maxima, sums, best, tokens, vocab, BLOCK: tl.constexpr, COUNT: tl.constexpr
    ):
        row, block = tl.program_id(0), tl.program_id(1)
        column = block * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(logits + row.to(tl.int64) * row_stride + column, mask=column < vocab, other=-float("inf"))
        x = x.to(tl.float32)
        largest = tl.max(x, axis=0)
        finite_max = tl.where(largest == -float("inf"), 0.0, largest)  # all -inf: sum 0, not exp(nan)
        summary = row * tl.num_programs(1) + block
        tl.store(maxima + summary, largest)
        tl.store(sums + summary, tl.sum(tl.exp(x - finite_max), axis=0))
        # The block's COUNT largest, best first, each taken out before the next. Once only -inf is left the
        # same column may come up again (or one past the vocabulary): such a candidate scores -inf and is
        # ranked only where an item has fewer finite scores than candidates; `_fused` clamps its token.
        for k in tl.static_range(COUNT):
            value, index = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
            tl.store(best + summary * COUNT + k, value)
            tl.store(tokens + summary * COUNT + k, block * BLOCK + index)
            x = tl.where(tl.arange(0, BLOCK) == index, -float("inf"), x)

    return block_summaries


@functools.cache
def fused_kernel_works(device: torch.device) -> bool:
    """Whether the Triton kernel runs here and ranks what torch ranks: the same tokens, scores to float32
    rounding, on a vocabulary that does not fill its last block, with a block of -inf logits and dead beams
    (score -1e9, as beam search starts); in float32, and in bf16 read as columns of a wider tensor (the decode
    step's lm_head output)."""
    return kernel_checks.passes(_agrees, device, torch.float32)


def _agrees(device: torch.device, _dtype: torch.dtype) -> bool:
    """The check itself (kernel_checks' frame: a CUDA device, any exception a failure); it tries both logit dtypes
    the step hands over, whatever the dtype asked."""
    generator = torch.Generator(device=device).manual_seed(0)
    vocab = 3 * BLOCK + 123
    wide = torch.randn(6, vocab + 5, generator=generator, device=device) * 4
    wide[1, BLOCK : 2 * BLOCK] = -torch.inf
    beam_scores = torch.tensor([[0.0, -1e9], [-1.5, -2.0], [0.0, -0.25]], device=device)
    for logits in (wide[:, :vocab].contiguous(), wide.to(torch.bfloat16)[:, :vocab]):
        expected_scores, expected_indices = candidates(logits, beam_scores, 6, fused=False)
        got_scores, got_indices = candidates(logits, beam_scores, 6, fused=True)
        torch.cuda.synchronize(device)
        if not torch.equal(got_indices, expected_indices):
            return False
        if not torch.allclose(got_scores, expected_scores, atol=1e-5, rtol=1e-6):
            return False
    return True
