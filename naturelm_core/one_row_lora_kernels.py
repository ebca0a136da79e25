"""The Triton kernels of naturelm_core.one_row_lora (which says why), in a module of their own: imported only where a
GPU (or Triton's interpreter) runs them, and with the shared block of the scaled product as a module-level function,
which both Triton's compiler and its interpreter resolve."""

import triton
import triton.language as tl


@triton.jit
def scaled_block(down, scales, weights, into, out_of, column, in_block, rank, SPECTRAL: tl.constexpr):
    """One block of rank columns of scale_rows(down) in float32: down * scales, plus out_of @ diag(weights) @
    into @ down within the block for a spectral row (naturelm_core.spectral.weigh_directions)."""
    x = tl.load(down + column, mask=in_block, other=0.0).to(tl.float32)
    scaled = x * tl.load(scales + column, mask=in_block, other=0.0)
    if SPECTRAL:
        square = in_block[:, None] & in_block[None, :]
        tile = column[:, None] * rank + column[None, :]  # element (k, j) is map[k, j]
        coordinates = tl.sum(tl.load(into + tile, mask=square, other=0.0) * x[None, :], axis=1)
        coordinates *= tl.load(weights + column, mask=in_block, other=0.0)
        out_of_t = tl.load(out_of + column[None, :] * rank + column[:, None], mask=square, other=0.0)
        scaled += tl.sum(out_of_t * coordinates[:, None], axis=0)  # element (k, j) is out_of[j, k]
    return scaled


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
    DEPENDENT: tl.constexpr,
):
    if DEPENDENT:  # launched as a dependent (naturelm_core.dependent_launch): wait for the kernel before it
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    live = rows < width
    local = tl.arange(0, BLOCK_RANK)  # columns within one block of rank columns
    in_block = local < block
    sums = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for index in tl.static_range(BLOCKS):  # q, k, v's blocks: B is zero outside a row's own
        column = index * block + local
        scaled = scaled_block(down, scales, weights, into, out_of, column, in_block, rank, SPECTRAL)
        scaled = scaled.to(out.dtype.element_ty).to(tl.float32)  # rounded as the unfused path hands it on
        where = live[:, None] & in_block[None, :]
        b = tl.load(lora_b + rows[:, None].to(tl.int64) * b_stride + column[None, :], mask=where, other=0.0)
        sums += tl.sum(b.to(tl.float32) * scaled[None, :], axis=1)
    before = tl.load(out + rows, mask=live, other=0.0).to(tl.float32)
    tl.store(out + rows, (before + sums).to(out.dtype.element_ty), mask=live)


@triton.jit
def add_lora_and_rotate_one_row(
    projected,
    width,
    scales,
    weights,
    into,
    out_of,
    lora_b,
    b_stride,
    rank,
    block,
    cos,
    sin,
    table_row,
    positions,
    columns,
    query,
    keys,
    values,
    cache_head,
    cache_column,
    SPECTRAL: tl.constexpr,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_RANK: tl.constexpr,
    DEPENDENT: tl.constexpr,
):
    if DEPENDENT:  # launched as a dependent (naturelm_core.dependent_launch): wait for the kernel before it
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    head = tl.program_id(0)  # q's heads, then k's, then v's
    part = tl.where(head < HEADS, 0, tl.where(head < HEADS + KV_HEADS, 1, 2))  # its block of B's rank columns
    local = tl.arange(0, BLOCK_RANK)
    in_block = local < block
    column = part * block + local
    scaled = scaled_block(projected + width, scales, weights, into, out_of, column, in_block, rank, SPECTRAL)
    scaled = scaled.to(query.dtype.element_ty).to(tl.float32)
    lanes = tl.arange(0, HALF)
    low = head.to(tl.int64) * 2 * HALF + lanes  # the head's two halves, which the rotation pairs
    high = low + HALF
    b_low = tl.load(lora_b + low[:, None] * b_stride + column[None, :], mask=in_block[None, :], other=0.0)
    b_high = tl.load(lora_b + high[:, None] * b_stride + column[None, :], mask=in_block[None, :], other=0.0)
    lo = tl.load(projected + low).to(tl.float32) + tl.sum(b_low.to(tl.float32) * scaled[None, :], axis=1)
    hi = tl.load(projected + high).to(tl.float32) + tl.sum(b_high.to(tl.float32) * scaled[None, :], axis=1)
    lo = lo.to(query.dtype.element_ty).to(tl.float32)  # q | k | v rounded as the unfused path hands them on
    hi = hi.to(query.dtype.element_ty).to(tl.float32)
    kv = head - HEADS - part // 2 * KV_HEADS  # k's or v's head
    cell = kv.to(tl.int64) * cache_head + tl.load(columns).to(tl.int64) * cache_column
    if part == 2:
        tl.store(values + cell + lanes, lo.to(values.dtype.element_ty))
        tl.store(values + cell + HALF + lanes, hi.to(values.dtype.element_ty))
    else:  # naturelm_core.rotary_store's rotation: x * cos + (x's halves swapped) * signed_sin
        position = tl.load(positions).to(tl.int64)
        cos_lo = tl.load(cos + position * table_row + lanes).to(tl.float32)
        cos_hi = tl.load(cos + position * table_row + HALF + lanes).to(tl.float32)
        sin_lo = tl.load(sin + position * table_row + lanes).to(tl.float32)
        sin_hi = tl.load(sin + position * table_row + HALF + lanes).to(tl.float32)
        rotated_lo = (lo * cos_lo + hi * sin_lo).to(query.dtype.element_ty)
        rotated_hi = (hi * cos_hi + lo * sin_hi).to(query.dtype.element_ty)
        if part == 0:
            target = query + head.to(tl.int64) * 2 * HALF
            tl.store(target + lanes, rotated_lo)
            tl.store(target + HALF + lanes, rotated_hi)
        else:
            tl.store(keys + cell + lanes, rotated_lo)
            tl.store(keys + cell + HALF + lanes, rotated_hi)
