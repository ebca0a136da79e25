"""A one-row decode step's LoRA term, B((A x) * scale), added to its projection's output in one Triton kernel.

Why: after naturelm_core.one_row folded the norms, o's LoRA A and the residual sums into the step's products, an
Explore answer still ran at 1.29x its bound (issue 23 asks 1.25x; H100, 2026-12-07 14:00Z). Per layer the LoRA
term cost two more launches for q | k | v and two for o: the rank-r product's per-row scale
(naturelm_core.low_rank, 2.8 µs a layer before session 14) and cuBLAS's B product added into the output (5.6 µs),
on a few hundred kilobytes. Here each program recomputes the scaled rank-r vector it needs (r numbers, and at
most an r x r map per block for a spectral row: a few kilobytes from L2) and adds its rows' share of B times it,
in place: one launch instead of two, and no rank-r tensor written and read back between them.

The numbers are the two kernels': the scaled product is rounded to the output's dtype before B multiplies it,
as the unfused path rounds the tensor it hands to cuBLAS, and the sum is accumulated in float32. The torch
version (`low_rank.scale_rows` then `addmm_`) serves on the CPU, with a LoRA scale other than 1, and wherever
`fused_kernel_works` fails.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from naturelm_core import low_rank

BLOCK_ROWS = 32  # output rows a program adds to: 192 programs for Llama-3.1-8B's q | k | v, 128 for o


def add_lora(
    out: Tensor,
    down: Tensor,
    scales: Tensor,
    spectral_scales: Tensor | None,
    into: Tensor,
    out_of: Tensor,
    lora_b: Tensor,
    scaling: Tensor | float | None,
    fused: bool,
    block: int | None = None,
) -> Tensor:
    """out += B scale_rows(down) for one row, in place; returns `out`.

    `out` [1, W] (a column slice of a wider row is fine), `down` [1, r] its rank-r product A x, `lora_b` [W, r],
    block-diagonal in blocks of `block` rank columns where several projections share it (q | k | v); `scales`,
    `spectral_scales`, `into`, `out_of` and `scaling` as naturelm_core.low_rank.scale_rows takes them.
    """
    rank = down.shape[1]
    block = block or rank
    if not fused or not low_rank.is_unit_scale(scaling) or rank % block:
        scaled = low_rank.scale_rows(down, scales, spectral_scales, into, out_of, scaling, False, block)
        return out.addmm_(scaled, lora_b.t())
    if out.shape[0] != 1 or out.stride(1) != 1 or down.stride(1) != 1 or lora_b.stride(1) != 1:
        raise ValueError(f"one row with contiguous columns: got out {tuple(out.shape)}, down {tuple(down.shape)}")
    spectral = spectral_scales is not None
    weights = spectral_scales if spectral else scales  # not read without a spectral row; any tensor will do
    scales, weights = scales.contiguous(), weights.contiguous()
    width = out.shape[1]
    _kernel()[(-(-width // BLOCK_ROWS),)](
        out,
        down,
        scales,
        weights,
        into.contiguous(),
        out_of.contiguous(),
        lora_b,
        width,
        rank,
        block,
        lora_b.stride(0),
        SPECTRAL=spectral,
        BLOCKS=rank // block,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_RANK=max(16, 1 << (block - 1).bit_length()),
    )
    return out


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def add_one_row_lora(
        out,
        down,
        scales,
        weights,
        into,
        out_of,
        lora_b,
        width,
        rank,
        block,
        b_stride,
        SPECTRAL: tl.constexpr,
        BLOCKS: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_RANK: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        live = rows < width
        local = tl.arange(0, BLOCK_RANK)  # columns within one block of rank columns
        in_block = local < block
        sums = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
        for index in tl.static_range(BLOCKS):  # q, k, v's blocks: B is zero outside a row's own
            column = index * block + local
            x = tl.load(down + column, mask=in_block, other=0.0).to(tl.float32)
            scaled = x * tl.load(scales + column, mask=in_block, other=0.0)
            if SPECTRAL:  # out_of @ diag(w) @ into @ x within the block (naturelm_core.spectral.weigh_directions)
                square = in_block[:, None] & in_block[None, :]
                tile = column[:, None] * rank + column[None, :]  # element (k, j) is map[k, j]
                coordinates = tl.sum(tl.load(into + tile, mask=square, other=0.0) * x[None, :], axis=1)
                coordinates *= tl.load(weights + column, mask=in_block, other=0.0)
                out_of_t = tl.load(out_of + column[None, :] * rank + column[:, None], mask=square, other=0.0)
                scaled += tl.sum(out_of_t * coordinates[:, None], axis=0)  # element (k, j) is out_of[j, k]
            scaled = scaled.to(out.dtype.element_ty).to(tl.float32)  # rounded as the unfused path hands it on
            where = live[:, None] & in_block[None, :]
            b = tl.load(lora_b + rows[:, None].to(tl.int64) * b_stride + column[None, :], mask=where, other=0.0)
            sums += tl.sum(b.to(tl.float32) * scaled[None, :], axis=1)
        before = tl.load(out + rows, mask=live, other=0.0).to(tl.float32)
        tl.store(out + rows, (before + sums).to(out.dtype.element_ty), mask=live)

    return add_one_row_lora


def fused_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel runs here and adds what the torch path adds (to rounding): Llama-3.1-8B's q | k | v (three
    blocks of 32) and o (one), plain and spectral rows, an output narrower than a block of rows."""
    if device.type != "cuda":
        return False
    try:
        return _agrees(device, dtype)
    except Exception:  # no Triton, no compiler, an unsupported GPU: the torch version serves
        return False


def _agrees(device: torch.device, dtype: torch.dtype) -> bool:
    generator = torch.Generator(device=device).manual_seed(0)
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for width, rank, block in ((6144, 96, 32), (4096, 32, 32), (77, 12, 4)):
        row = torch.randn(1, width + rank, generator=generator, device=device, dtype=dtype)
        lora_b = torch.randn(width, rank, generator=generator, device=device, dtype=dtype) * 0.1
        scales = torch.rand(1, 1, rank, generator=generator, device=device) + 0.5
        maps = torch.linalg.qr(torch.randn(2, rank // block, block, block, generator=generator, device=device)).Q
        into, out_of = (torch.block_diag(*m.unbind()) for m in maps.unbind())
        for spectral in (None, torch.rand(1, 1, rank, generator=generator, device=device) * 2):
            expected, got = row.clone(), row.clone()
            for target, fused in ((expected, False), (got, True)):
                out, down = target[:, :width], target[:, width:]
                add_lora(out, down, scales, spectral, into, out_of, lora_b, None, fused, block)
            torch.cuda.synchronize(device)
            if not torch.allclose(got.float(), expected.float(), **tolerance):
                return False
    return True
