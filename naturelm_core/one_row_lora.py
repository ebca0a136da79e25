"""A one-row decode step's LoRA term, B((A x) * scale), added to its projection's output in one Triton kernel.

Why: after naturelm_core.one_row folded the norms, o's LoRA A and the residual sums into the step's products, an
Explore answer still ran at 1.29x its bound (issue 23 asks 1.25x; H100, 2026-12-07 14:00Z). Per layer the LoRA
term cost two more launches for q | k | v and two for o: the rank-r product's per-row scale
(naturelm_core.low_rank, 2.8 µs a layer before session 14) and cuBLAS's B product added into the output (5.6 µs),
on a few hundred kilobytes. Here each program recomputes the scaled rank-r vector it needs (r numbers, and at
most an r x r map per block for a spectral row: a few kilobytes from L2) and adds its rows' share of B times it,
in place: one launch instead of two, and no rank-r tensor written and read back between them.

For q | k | v, `add_lora_and_rotate` goes one step further: a program per head adds the head's LoRA term, then
applies the rotary embedding and writes the query, or the key and value into the KV cache, as
naturelm_core.rotary_store's kernel does: one launch where there were three.

The numbers are the unfused kernels': the scaled product is rounded to the output's dtype before B multiplies it,
as the unfused path rounds the tensor it hands to cuBLAS, and the sum is accumulated in float32. The torch
version (`low_rank.scale_rows` then `addmm_`) serves on the CPU, with a LoRA scale other than 1, and wherever
`fused_kernel_works` fails.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from naturelm_core import dependent_launch, kernel_checks, low_rank
from naturelm_core.rotary_store import RotaryStore

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
    dependent: bool = False,
) -> Tensor:
    """out += B scale_rows(down) for one row, in place; returns `out`.

    `out` [1, W] (a column slice of a wider row is fine), `down` [1, r] its rank-r product A x, `lora_b` [W, r],
    block-diagonal in blocks of `block` rank columns where several projections share it (q | k | v); `scales`,
    `spectral_scales`, `into`, `out_of` and `scaling` as naturelm_core.low_rank.scale_rows takes them. `dependent`:
    launched as a dependent of the kernel before it (naturelm_core.dependent_launch).
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
    _kernels()[0][(-(-width // BLOCK_ROWS),)](
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
        BLOCK_RANK=low_rank.rank_block_width(block),
        **dependent_launch.options(dependent),
    )
    return out


def add_lora_and_rotate(
    projected: Tensor,
    scales: Tensor,
    spectral_scales: Tensor | None,
    into: Tensor,
    out_of: Tensor,
    lora_b: Tensor,
    block: int,
    rotary: RotaryStore,
    keys: Tensor,
    values: Tensor,
    fused: bool,
    dependent: bool = False,
) -> Tensor:
    """One row's [q | k | v | A x] product in, its query [1, heads, 1, d] out: the LoRA term added to q, k and v
    (`lora_b` [q + k + v, 3 blocks of `block`], block-diagonal), q and k rotated, k and v written to `keys` and
    `values` at the rotary store's column, as `add_lora` followed by the rotary store compute them; `dependent` as
    `add_lora` takes it."""
    width = lora_b.shape[0]
    if not fused:
        qkv = add_lora(
            projected[:, :width],
            projected[:, width:],
            scales,
            spectral_scales,
            into,
            out_of,
            lora_b,
            None,
            False,
            block,
        )
        return rotary(qkv, keys, values)
    heads, kv_heads, head_dim = rotary.num_heads, rotary.num_kv_heads, rotary.head_dim
    if projected.shape[0] != 1 or projected.stride(1) != 1 or lora_b.shape[1] != 3 * block:
        raise ValueError(
            f"one row of q | k | v and three rank blocks: got {tuple(projected.shape)}, B {tuple(lora_b.shape)}"
        )
    spectral = spectral_scales is not None
    weights = spectral_scales if spectral else scales
    scales, weights = scales.contiguous(), weights.contiguous()
    query = torch.empty(1, heads, 1, head_dim, dtype=projected.dtype, device=projected.device)
    _kernels()[1][(heads + 2 * kv_heads,)](
        projected,
        width,
        scales,
        weights,
        into.contiguous(),
        out_of.contiguous(),
        lora_b,
        lora_b.stride(0),
        lora_b.shape[1],
        block,
        rotary.cos,
        rotary.signed_sin,
        rotary.cos.stride(0),
        rotary.positions,
        rotary.columns,
        query,
        keys,
        values,
        keys.stride(1),
        keys.stride(2),
        SPECTRAL=spectral,
        HEADS=heads,
        KV_HEADS=kv_heads,
        HALF=head_dim // 2,
        BLOCK_RANK=low_rank.rank_block_width(block),
        **dependent_launch.options(dependent),
    )
    return query


def rotation_fusable(head_dim: int, lora_b: Tensor, block: int | None) -> bool:
    """Whether `add_lora_and_rotate`'s kernel takes this layer: three equal rank blocks, and a head's half a power of
    two (as the rotary store's kernel needs)."""
    half = head_dim // 2
    return block is not None and lora_b.shape[1] == 3 * block and head_dim % 2 == 0 and half & (half - 1) == 0


@functools.cache
def _kernels():
    """(add_one_row_lora, add_lora_and_rotate_one_row), compiled on first use (Triton is imported only where a GPU
    runs them)."""
    from naturelm_core import one_row_lora_kernels

    return one_row_lora_kernels.add_one_row_lora, one_row_lora_kernels.add_lora_and_rotate_one_row


def fused_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernels run here and compute what the torch path computes (to rounding): Llama-3.1-8B's q | k | v
    (three blocks of 32) and o (one), plain and spectral rows, an output narrower than a block of rows; the rotating
    form on Llama's heads and on a small model's, its cache written at a column past the first."""
    return kernel_checks.passes(_agrees, device, dtype)


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
    for heads, kv_heads, head_dim, block in ((32, 8, 128, 32), (4, 2, 16, 8)):
        for spectral in (False, True):
            if not rotation_agrees(heads, kv_heads, head_dim, block, spectral, dtype, device, tolerance):
                return False
    return True


def rotation_agrees(
    heads: int,
    kv_heads: int,
    head_dim: int,
    block: int,
    spectral: bool,
    dtype: torch.dtype,
    device: torch.device,
    tolerance: dict[str, float],
) -> bool:
    """`add_lora_and_rotate`'s kernel against its torch version on one random case: the query, and the whole KV cache
    (the new column written, every other one untouched). Triton's interpreter runs it on the CPU (the tests)."""
    generator = torch.Generator(device=device).manual_seed(heads + block + spectral)

    def random(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * scale).to(dtype)

    widths = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
    rank = 3 * block
    projected = random(1, sum(widths) + rank)
    lora_b = torch.block_diag(*(random(width, block, scale=0.1) for width in widths))
    scales = torch.rand(1, 1, rank, generator=generator, device=device) + 0.5
    maps = torch.linalg.qr(torch.randn(2, 3, block, block, generator=generator, device=device)).Q
    into, out_of = (torch.block_diag(*m.unbind()) for m in maps.unbind())
    weights = torch.rand(1, 1, rank, generator=generator, device=device) * 2 if spectral else None
    table = torch.randn(2, 12, head_dim, generator=generator, device=device).to(dtype)
    store = RotaryStore(
        table[0],
        table[1],
        torch.tensor([[9]], device=device),
        torch.tensor([5], device=device),
        heads,
        kv_heads,
        head_dim,
        False,
    )
    results = []
    for fused in (False, True):
        caches = torch.Generator(device=device).manual_seed(1)  # the same caches both times
        keys, values = (torch.randn(1, kv_heads, 8, head_dim, generator=caches, device=device).to(dtype) for _ in "kv")
        query = add_lora_and_rotate(
            projected.clone(), scales, weights, into, out_of, lora_b, block, store, keys, values, fused
        )  # the torch version adds the LoRA term into its input
        results.append((query.float(), keys.float(), values.float()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return all(torch.allclose(got, expected, **tolerance) for got, expected in zip(*results, strict=True))
