"""Each row's scale on LoRA's rank-r product (alpha, recipe multipliers, spectral weights): one Triton kernel on CUDA.

Why: the static decode step scales every projection's rank-r product A x per row, and a batch holding a
spectral recipe also sends it through the projection's singular basis (naturelm_core.spectral). In torch that
is one kernel per projection for plain rows and six with a spectral row (the multiply, a cast, two r x r
products, the weights' multiply, the add): 384 kernels of a few microseconds each per decode step, on a few
hundred kilobytes. Spectral sweeps ran at 92% of plain alphas' speed (H100, benchmarks/gpu.py, 2026-12-07
09:06Z). One program per block of rows reads the product once, computes both terms in float32 and writes the
sum once. The torch version is the reference and runs on the CPU; `fused_kernel_works` checks the kernel
against it before it is used.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from naturelm_core.spectral import weigh_directions

BLOCK_ROWS = 16  # rows per program: the smallest operand Triton's matrix product takes


def rank_block_width(block: int) -> int:
    """The Triton block that holds `block` rank columns: a power of two, and at least the 16 rows or columns
    Triton's matrix product takes (this module's kernel multiplies by the maps' blocks with tl.dot)."""
    return max(16, 1 << (block - 1).bit_length())


def scale_rows(
    down: Tensor,
    scales: Tensor,
    spectral_scales: Tensor | None,
    into: Tensor,
    out_of: Tensor,
    scaling: Tensor | float | None,
    fused: bool,
    block: int | None = None,
) -> Tensor:
    """down * scales * scaling, plus out_of @ diag(spectral_scales) @ into @ down * scaling where spectral
    scales are given: a new [items x tokens, r] tensor in down's dtype.

    `down` [items x tokens, r] (a column slice of a wider product is fine), `scales` and `spectral_scales`
    [items, 1, r] float32, one per item and rank column for all its tokens, each zero on the other kind of
    item, so a plain row's numbers are those of the plain product whether or not a spectral row shares its
    batch. `into` and `out_of` [r, r]: the projections' singular maps, block-diagonal in blocks of `block` rank
    columns when several projections share the product (q | k | v), one block when None. With `fused` (and no
    LoRA scale other than 1, NatureLM's), one kernel computes both terms, one program per block of rows and of
    rank columns: only the diagonal blocks of the maps are read (a whole 96 x 96 map per program ran spectral
    sweeps at 71% of plain alphas' speed, H100).
    """
    if fused and is_unit_scale(scaling):
        return _fused(down, scales, spectral_scales, into, out_of, block or down.shape[1])
    low_rank = _scaled(down, scales, scaling)
    if spectral_scales is not None:
        low_rank.add_(_spectral(down, spectral_scales, into, out_of, scaling))
    return low_rank


def is_unit_scale(scaling: Tensor | float | None) -> bool:
    """Whether a LoRA scale leaves the product as it is (NatureLM's are all 1): the kernels assume it."""
    return scaling is None or (not isinstance(scaling, Tensor) and scaling == 1.0)


def _scaled(down: Tensor, scales: Tensor, scaling: Tensor | float | None) -> Tensor:
    """Each row's rank-r product times its scale (in float32, as scales are) and the LoRA scale.

    Without a LoRA scale it is one kernel: the float32 product is rounded once into the output's dtype.
    """
    per_item = down.unflatten(0, (scales.shape[0], -1))  # [items, tokens, r], a view
    if not is_unit_scale(scaling):
        return (per_item * scales * scaling).to(down.dtype).flatten(0, 1)
    out = torch.empty(per_item.shape, dtype=down.dtype, device=down.device)
    return torch.mul(per_item, scales, out=out).flatten(0, 1)


def _spectral(
    down: Tensor, spectral_scales: Tensor, into: Tensor, out_of: Tensor, scaling: Tensor | float | None
) -> Tensor:
    """Spectral rows' products through the singular basis, weighed by their scale times w; exactly zero on
    other rows (their `spectral_scales` are 0), so adding it leaves those rows' numbers as they were."""
    per_item = down.unflatten(0, (spectral_scales.shape[0], -1))  # [items, tokens, r]
    weighed = weigh_directions(per_item, spectral_scales, into, out_of).flatten(0, 1)
    return weighed if is_unit_scale(scaling) else weighed * scaling


def _fused(
    down: Tensor, scales: Tensor, spectral_scales: Tensor | None, into: Tensor, out_of: Tensor, block: int
) -> Tensor:
    rows, rank = down.shape
    items = scales.shape[0]
    if rank % block:
        raise ValueError(f"{rank} rank columns do not split into blocks of {block}")
    if down.stride(1) != 1:
        down = down.contiguous()
    spectral = spectral_scales is not None
    weights = spectral_scales if spectral else scales  # not read without a spectral row; any tensor will do
    if scales.stride(-1) != 1 or weights.stride(-1) != 1 or weights.stride(0) != scales.stride(0):
        scales, weights = scales.contiguous(), weights.contiguous()
    out = torch.empty((rows, rank), dtype=down.dtype, device=down.device)
    _kernel()[(-(-rows // BLOCK_ROWS), rank // block)](
        down,
        scales,
        weights,
        into.contiguous(),
        out_of.contiguous(),
        out,
        rows,
        rows // items,
        rank,
        block,
        down.stride(0),
        scales.stride(0),
        SPECTRAL=spectral,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_RANK=rank_block_width(block),
    )
    return out


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["rows", "tokens"])  # they change with every batch shape: one compilation
    def scale_low_rank(
        down,
        scales,
        weights,
        into,
        out_of,
        out,
        rows,
        tokens,
        rank,
        block,
        down_stride,
        scale_stride,
        SPECTRAL: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_RANK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        local = tl.arange(0, BLOCK_RANK)  # this program's columns within its block of the maps
        column = tl.program_id(1) * block + local
        inside = (row < rows)[:, None] & (local < block)[None, :]
        item = row // tokens
        x = tl.load(down + row[:, None] * down_stride + column[None, :], mask=inside, other=0.0).to(tl.float32)
        scale = tl.load(scales + item[:, None] * scale_stride + column[None, :], mask=inside, other=0.0)
        result = x * scale
        if SPECTRAL:
            # the block's into^T and out_of^T, read transposed: element (k, j) of into^T is into[j, k]
            square = (local < block)[:, None] & (local < block)[None, :]
            transposed = column[None, :] * rank + column[:, None]
            into_t = tl.load(into + transposed, mask=square, other=0.0)
            out_of_t = tl.load(out_of + transposed, mask=square, other=0.0)
            weight = tl.load(weights + item[:, None] * scale_stride + column[None, :], mask=inside, other=0.0)
            coordinates = tl.dot(x, into_t, input_precision="ieee") * weight
            result += tl.dot(coordinates, out_of_t, input_precision="ieee")
        tl.store(out + row[:, None] * rank + column[None, :], result.to(out.dtype.element_ty), mask=inside)

    return scale_low_rank


def fused_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton kernel runs here and computes what torch computes (to rounding): NatureLM's q | k | v
    (96 rank columns in blocks of 32) and o (32), a block below the kernel's smallest, plain and spectral rows
    side by side, a column slice of a wider product, rows that do not fill the last block of rows."""
    if device.type != "cuda" or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    generator = torch.Generator(device=device).manual_seed(0)
    for rank, block, items, tokens in ((96, 32, 5, 2), (32, 32, 3, 7), (12, 4, 2, 1)):
        down = torch.randn(items * tokens, rank + 40, generator=generator, device=device, dtype=dtype)[:, 40:]
        scales = torch.rand(items, 1, rank, generator=generator, device=device) + 0.5
        spectral = torch.rand(items, 1, rank, generator=generator, device=device) * 2
        scales[1::2], spectral[::2] = 0.0, 0.0  # odd items spectral, even items plain
        maps = torch.linalg.qr(torch.randn(2, rank // block, block, block, generator=generator, device=device)).Q
        into, out_of = (torch.block_diag(*m.unbind()) for m in maps.unbind())
        for spectral_scales in (None, spectral):
            expected = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=False)
            try:
                got = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=True, block=block)
                torch.cuda.synchronize(device)
            except Exception:  # no Triton, no compiler, an unsupported GPU: the torch version serves
                return False
            tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
            if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), **tolerance):
                return False
    return True
