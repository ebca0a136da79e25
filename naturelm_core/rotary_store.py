"""Rotary embedding of q and k and the KV-cache write of one layer: one Triton kernel on CUDA, torch elsewhere.

Why: between the q/k/v product and attention, the decode step spent six small kernels per layer
(swap halves, two products, two cache writes, the query's re-layout for attention): 33 µs of each
layer's ~430 µs at the sweep batch (176 items x 2 beams), 10 µs at one row. One kernel reads q, k and
v once and writes each where attention reads it: 4.1 and 2.5 µs (H100, benchmarks/gpu.py's profile).
The torch version is the reference: it runs on the CPU (and wherever Triton does not), and
`fused_kernel_works` checks the kernel against it before it is used.

Llama's rotary embedding is x * cos + rotate_half(x) * sin; with `signed_sin` = [-sin_1, sin_2] that
is x * cos + (x's halves swapped) * signed_sin.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


class RotaryStore:
    """One forward pass's rotary positions and cache columns, applied layer by layer.

    `positions` [items, length] index the tables `cos` and `signed_sin` [positions, d]; token t of
    every item writes its key and value to cache column `columns[t]`.
    """

    def __init__(
        self,
        cos: Tensor,
        signed_sin: Tensor,
        positions: Tensor,
        columns: Tensor,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        fused: bool,
    ) -> None:
        self.cos, self.signed_sin, self.positions, self.columns = cos, signed_sin, positions, columns
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.fused = fused
        if not fused:  # tables tiled over q's and k's heads once per pass: same-shape products run vectorised
            items, length = positions.shape
            heads = num_heads + num_kv_heads
            self.tiled_cos = cos[positions].reshape(items * length, 1, -1).expand(-1, heads, -1).flatten(1)
            self.tiled_sin = signed_sin[positions].reshape(items * length, 1, -1).expand(-1, heads, -1).flatten(1)

    def __call__(self, qkv: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Rotate q and k of `qkv` [items x length, (heads + 2 kv) x d], write k and v into `keys` and
        `values` [items, kv, columns, d]; return the rotated query as [items, heads, length, d]."""
        if self.fused:
            return _fused(self, qkv, keys, values)
        items, length = self.positions.shape
        query_width = self.num_heads * self.head_dim
        rotated_width = query_width + self.num_kv_heads * self.head_dim
        rotated = _rotate(qkv[:, :rotated_width], self.tiled_cos, self.tiled_sin, self.head_dim)
        key = rotated[:, query_width:].view(items, length, self.num_kv_heads, self.head_dim)
        value = qkv[:, rotated_width:].view(items, length, self.num_kv_heads, self.head_dim)
        keys.index_copy_(2, self.columns, key.transpose(1, 2))
        values.index_copy_(2, self.columns, value.transpose(1, 2))
        return rotated[:, :query_width].view(items, length, self.num_heads, self.head_dim).transpose(1, 2)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor, head_dim: int) -> Tensor:
    """x * cos + (x's halves swapped, per head) * signed_sin on [N, heads x d]: three kernels instead of six."""
    half = head_dim // 2
    heads = x.view(x.shape[0], -1, head_dim)
    swapped = torch.cat((heads[..., half:], heads[..., :half]), dim=-1).view_as(x)
    return torch.addcmul(x * cos, swapped, signed_sin)


def _fused(store: RotaryStore, qkv: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    items, length = store.positions.shape
    # [items, length, heads, d] in memory, seen as [items, heads, length, d]: cuDNN's attention writes its output
    # in its query's layout, so the prompt's output is then read as [tokens, heads x d] with no copy.
    query = torch.empty(items, length, store.num_heads, store.head_dim, dtype=qkv.dtype, device=qkv.device)
    group = _head_group(store.num_heads, store.num_kv_heads)
    _kernel()[(items * length, (store.num_heads + store.num_kv_heads) // group)](
        qkv,
        qkv.stride(0),
        store.cos,
        store.signed_sin,
        store.cos.stride(0),
        store.positions,
        store.positions.stride(0),
        store.positions.stride(1),
        store.columns,
        query,
        keys,
        values,
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        length,
        HEADS=store.num_heads,
        KV_HEADS=store.num_kv_heads,
        HALF=store.head_dim // 2,
        GROUP=group,
    )
    return query.transpose(1, 2)


def _head_group(num_heads: int, num_kv_heads: int) -> int:
    """Heads per program: a power of two dividing both head counts, at most 8. One program per token
    (all 40 heads) left one interactive row's step serial (12 µs); one per head made a 176-item prompt
    410,000 programs (316 µs per layer); 8 serves both."""
    group = 8
    while num_heads % group or num_kv_heads % group:
        group //= 2
    return group


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit  # specialised on strides divisible by 16, so loads and stores are vectorised
    def rotate_and_store(
        qkv,
        qkv_row,
        cos,
        sin,
        table_row,
        positions,
        item_stride,
        token_stride,
        columns,
        query,
        keys,
        values,
        cache_item,
        cache_head,
        cache_column,
        length,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HALF: tl.constexpr,
        GROUP: tl.constexpr,
    ):
        token = tl.program_id(0).to(tl.int64)
        # A block of GROUP heads: query heads, or (from HEADS on) key heads with their value heads.
        first = tl.program_id(1) * GROUP
        item = token // length
        t = token % length
        position = tl.load(positions + item * item_stride + t * token_stride)
        lanes = tl.arange(0, HALF)[None, :]
        heads = first + tl.arange(0, GROUP)[:, None]
        cos_lo = tl.load(cos + position * table_row + lanes).to(tl.float32)
        cos_hi = tl.load(cos + position * table_row + HALF + lanes).to(tl.float32)
        sin_lo = tl.load(sin + position * table_row + lanes).to(tl.float32)
        sin_hi = tl.load(sin + position * table_row + HALF + lanes).to(tl.float32)
        row = qkv + token * qkv_row
        lo = tl.load(row + heads * 2 * HALF + lanes).to(tl.float32)
        hi = tl.load(row + heads * 2 * HALF + HALF + lanes).to(tl.float32)
        rotated_lo = (lo * cos_lo + hi * sin_lo).to(query.dtype.element_ty)
        rotated_hi = (hi * cos_hi + lo * sin_hi).to(query.dtype.element_ty)
        if first < HEADS:
            target = query + (token * HEADS + heads) * 2 * HALF
            tl.store(target + lanes, rotated_lo)
            tl.store(target + HALF + lanes, rotated_hi)
        else:
            kv = heads - HEADS
            cell = item * cache_item + kv * cache_head + tl.load(columns + t) * cache_column
            tl.store(keys + cell + lanes, rotated_lo)
            tl.store(keys + cell + HALF + lanes, rotated_hi)
            full = tl.arange(0, 2 * HALF)[None, :]
            tl.store(values + cell + full, tl.load(row + (HEADS + KV_HEADS + kv) * 2 * HALF + full))

    return rotate_and_store


def fused_kernel_works(
    device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int
) -> bool:
    """Whether the Triton kernel runs here and writes what the torch version writes (to rounding).

    Checked once per model on a small random case with left-over cache columns and expanded positions,
    the shapes the decode step passes; anything else falls back to torch.
    """
    if device.type != "cuda" or head_dim % 2 or (head_dim // 2) & (head_dim // 2 - 1):
        return False
    generator = torch.Generator(device=device).manual_seed(0)
    items, length, columns_total, table = 3, 2, 9, 16
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(items * length, width + 5, generator=generator, device=device, dtype=dtype)[:, :width]
    cos = torch.randn(table, head_dim, generator=generator, device=device, dtype=dtype)
    sin = torch.randn(table, head_dim, generator=generator, device=device, dtype=dtype)
    positions = torch.tensor([4, 7, 11], device=device)[:, None].expand(-1, length)
    columns = torch.tensor([5, 6], device=device)
    results = []
    try:
        for fused in (False, True):
            keys = torch.zeros(items, num_kv_heads, columns_total, head_dim, device=device, dtype=dtype)
            values = torch.zeros_like(keys)
            store = RotaryStore(cos, sin, positions, columns, num_heads, num_kv_heads, head_dim, fused)
            results.append((store(qkv, keys, values).contiguous(), keys, values))
        torch.cuda.synchronize(device)
    except Exception:  # no Triton, no compiler, an unsupported GPU: the torch version serves
        return False
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if dtype != torch.float32 else {"atol": 1e-5, "rtol": 1e-5}
    return all(torch.allclose(a.float(), b.float(), **tolerance) for a, b in zip(*results, strict=True))
