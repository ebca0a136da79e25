"""A decode step's attention (a token per beam, grouped heads as rows): one Triton kernel on CUDA, torch elsewhere.

Why: at the sweep batch (176 items x 2 beams) torch's scaled_dot_product_attention took about 54 µs a layer on
an H100 (53 with cuDNN, 56 memory-efficient: benchmarks/decode_parts.py), about three times the time to read
the keys and values at copy bandwidth. Its inputs are small and odd-shaped for those kernels: 8 query rows per item and
kv head (4 grouped heads x 2 beams) over a window of about 100 columns, and a bf16 bias materialised per row
and expanded per head. One program per (item, kv head) reads the item's keys and values of that head once,
for all its query rows, and the boolean visibility of each beam (`DecodeState.mask & ancestry`) itself, with
no bias built; it writes the output in the layout the o projection reads, with no permute copy. The torch
version (`reference`) is what the decode step computes without the kernel; `fused_kernel_works` checks the
kernel against it before it is used.

Measured on an H100: 46.1 against cuDNN's 52.9 µs a layer at the sweep batch (benchmarks/decode_parts.py's
`shared_prompt_triton` candidates, 2026-12-07 07:24Z), sweeps 2.4-4.1% faster than without it (benchmarks/gpu.py,
09:02Z); the decode step uses it only where `fused_kernel_works` passes.

Fully masked rows (items beyond the loaded batch) average the window's values uniformly, as the finite bias
does in torch's math kernel (the CPU's), never NaN: a masked column scores a large negative finite number, a column
beyond the window -inf. CUDA's memory-efficient SDPA gives such rows zeros instead: it scales the biased scores by
log2(e), so the dtype's lowest value overflows to -inf, and it writes 0 where a row's weights sum to 0. Those rows
are no item's output, so the start-up check holds them to the kernel's average (`_expected`), not to SDPA's value.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from naturelm_core import dependent_launch

BLOCK_COLUMNS = 64  # key columns per step of a program's loop
MIN_ROWS = 16  # tl.dot needs 16 rows; a kv head's 4 groups x 2 beams are 8, padded


def attention(
    query: Tensor, keys: Tensor, values: Tensor, visible: Tensor, fused: bool, dependent: bool = False
) -> Tensor:
    """Attention of query [items, heads, beams, d] to keys and values [items, kv heads, window, d] where
    `visible` [items, beams, window] (bool) allows it; output [items x beams, heads x d], row item x beams + beam.

    Head h attends with kv head h // (heads / kv heads), at scale 1 / sqrt(d). Strided views of a bigger
    cache (the state's keys, sliced to the window) are read in place where their last dimension is contiguous.
    `dependent`: the kernel launched as a dependent of the one before it (naturelm_core.dependent_launch).
    """
    if not fused:
        return reference(query, keys, values, visible)
    return _fused(query, keys, values, visible, dependent=dependent)


def reference(query: Tensor, keys: Tensor, values: Tensor, visible: Tensor) -> Tensor:
    """The decode step's torch path (llama_step's `_forward` and `_attention` with `queries_as_rows`): a bias
    of 0 or the dtype's lowest value, expanded over the grouped heads, and SDPA over [items, kv, groups x beams, d]
    with query row g x beams + b."""
    items, heads, beams, head_dim = query.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    bias = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(
        ~visible[:, None], torch.finfo(query.dtype).min
    )
    bias = bias[:, :, None].expand(-1, -1, groups, -1, -1).flatten(2, 3)
    attended = nn.functional.scaled_dot_product_attention(
        query.reshape(items, kv_heads, groups * beams, head_dim), keys, values, attn_mask=bias
    )
    attended = attended.view(items, kv_heads, groups, beams, head_dim).permute(0, 3, 1, 2, 4)
    return attended.reshape(items * beams, -1)


def _fused(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    visible: Tensor,
    block_columns: int = BLOCK_COLUMNS,
    float32_products: bool = False,
    num_warps: int = 4,
    num_stages: int | None = None,
    dependent: bool = False,
) -> Tensor:
    """The kernel. bf16 (or fp16) inputs are multiplied as such, the usual flash-attention form: q.k is exact in
    the float32 sums, and the softmax weights are rounded to bf16 before they weigh the values. On an H100 that took
    40.1 against 46.6 µs a layer at the sweep batch with both products' operands widened to float32 (tf32 weights;
    benchmarks/decode_parts.py, 2026-12-07 11:43Z): `float32_products=True`, kept for that benchmark to compare.
    Triton's interpreter multiplies bf16 tensors as their raw 16-bit patterns (triton 3.8,
    `InterpreterBuilder.create_dot`): the tests teach it what a bf16 tensor holds. float32 inputs always take the
    exact ("ieee") float32 products, which tl.dot would otherwise round to tf32. `num_warps` and `num_stages`
    (Triton's own default when None) are for benchmarks/decode_parts.py to compare launch configurations."""
    items, heads, beams, head_dim = query.shape
    _, kv_heads, window, _ = keys.shape
    groups = heads // kv_heads
    query, keys, values = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, keys, values))
    if visible.stride(-1) != 1:
        visible = visible.contiguous()
    out = torch.empty(items * beams, heads * head_dim, dtype=query.dtype, device=query.device)
    rows = max(MIN_ROWS, 1 << (groups * beams - 1).bit_length())
    _kernel()[(items, kv_heads)](
        query,
        keys,
        values,
        visible.view(torch.uint8),  # the same bytes: Triton loads bytes more plainly than booleans
        out,
        query.stride(0),
        query.stride(1),
        query.stride(2),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        visible.stride(0),
        visible.stride(1),
        window,
        math.log2(math.e) / math.sqrt(head_dim),
        BEAMS=beams,
        GROUPS=groups,
        HEAD_DIM=head_dim,
        BLOCK_M=rows,
        BLOCK_N=block_columns,
        FLOAT32_DOT=float32_products or query.dtype == torch.float32,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        **({} if num_stages is None else {"num_stages": num_stages}),
        **dependent_launch.options(dependent),
    )
    return out


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention(
        query,
        keys,
        values,
        visible,
        out,
        query_item,
        query_head,
        query_beam,
        keys_item,
        keys_head,
        keys_column,
        values_item,
        values_head,
        values_column,
        visible_item,
        visible_beam,
        window,
        scale_log2,  # 1 / sqrt(d), times log2(e): the softmax runs in base 2
        BEAMS: tl.constexpr,
        GROUPS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        FLOAT32_DOT: tl.constexpr,  # products of float32 operands (see `_fused`), else of the inputs' dtype
        PRECISION: tl.constexpr,  # of float32 products: "ieee" for float32 inputs, "tf32" (exact for bf16) else
        DEPENDENT: tl.constexpr,  # launched as a dependent: wait for the kernel before it
    ):
        if DEPENDENT:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        item = tl.program_id(0).to(tl.int64)
        kv = tl.program_id(1).to(tl.int64)
        rows = tl.arange(0, BLOCK_M)  # row g x BEAMS + b: grouped head kv x GROUPS + g, beam b
        live = rows < GROUPS * BEAMS
        beam = rows % BEAMS
        head = kv * GROUPS + rows // BEAMS
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(
            query + item * query_item + head[:, None] * query_head + beam[:, None] * query_beam + dims[None, :],
            mask=live[:, None],
            other=0.0,
        )
        key_base = keys + item * keys_item + kv * keys_head
        value_base = values + item * values_item + kv * values_head
        seen_base = visible + item * visible_item + beam[:, None] * visible_beam
        top = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if FLOAT32_DOT:
            q = q.to(tl.float32)
        for start in range(0, window, BLOCK_N):
            columns = start + tl.arange(0, BLOCK_N)
            inside = columns < window
            k = tl.load(key_base + columns[:, None] * keys_column + dims[None, :], mask=inside[:, None], other=0.0)
            if FLOAT32_DOT:
                scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision=PRECISION)
            else:
                scores = tl.dot(q, tl.trans(k))
            seen = tl.load(seen_base + columns[None, :], mask=inside[None, :], other=0) != 0
            # A masked column: a large finite negative score (a fully masked row averages, as the finite bias
            # does); a column beyond the window: -inf, no weight at all (each block has one inside).
            scores = tl.where(seen, scores * scale_log2, -1.0e30)
            scores = tl.where(inside[None, :], scores, float("-inf"))
            new_top = tl.maximum(top, tl.max(scores, axis=1))
            rescale = tl.exp2(top - new_top)
            weights = tl.exp2(scores - new_top[:, None])
            total = total * rescale + tl.sum(weights, axis=1)
            v = tl.load(value_base + columns[:, None] * values_column + dims[None, :], mask=inside[:, None], other=0.0)
            if FLOAT32_DOT:
                update = tl.dot(weights, v.to(tl.float32), input_precision=PRECISION)
            else:
                update = tl.dot(weights.to(v.dtype), v)
            acc = acc * rescale[:, None] + update
            top = new_top
        acc = acc / total[:, None]
        heads = GROUPS * tl.num_programs(1)
        target = out + ((item * BEAMS + beam[:, None]) * heads + head[:, None]) * HEAD_DIM + dims[None, :]
        tl.store(target, acc.to(out.dtype.element_ty), mask=live[:, None])

    return decode_attention


def fused_kernel_works(
    device: torch.device, dtype: torch.dtype, num_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128
) -> bool:
    """Whether the Triton kernel runs here and computes what `reference` computes (to rounding)."""
    return why_not_fused(device, dtype, num_heads, num_kv_heads, head_dim) is None


def why_not_fused(
    device: torch.device, dtype: torch.dtype, num_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128
) -> str | None:
    """None where the kernel may serve, else why not: checked at the model's heads, for 1, 2 and 3 beams,
    windows the column block does not divide, keys and values as strided views of a longer cache,
    ancestry-like visibility and a fully masked item. (On an H100, 2026-12-07, the check refused the kernel with
    "differs from the reference at 1 beams, window 71: max abs 0.361", most likely the fully masked item, which
    SDPA's memory-efficient kernel returns as zeros: read from its source and reproduced on the CPU, not yet
    re-run on a GPU. See the module's docstring and `_expected`.)"""
    if device.type != "cuda":
        return "not a CUDA device"
    return _disagreement(device, dtype, num_heads, num_kv_heads, head_dim)


def _disagreement(
    device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int
) -> str | None:
    """`why_not_fused`'s cases on any device: the interpreter tests run them on the CPU."""
    if num_heads % num_kv_heads or head_dim < 16 or head_dim & (head_dim - 1):
        return f"unsupported heads: {num_heads} / {num_kv_heads} of {head_dim}"
    generator = torch.Generator(device=device).manual_seed(0)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    for beams, window in ((1, 71), (2, 100), (3, 64)):
        items, length = 5, window + 19
        cache = torch.randn(2, items, num_kv_heads, length, head_dim, generator=generator, device=device, dtype=dtype)
        keys, values = cache[0, :, :, :window], cache[1, :, :, :window]
        query = torch.randn(items, num_heads, beams, head_dim, generator=generator, device=device, dtype=dtype)
        visible = torch.rand(items, beams, window, generator=generator, device=device) < 0.7
        visible[:, :, :3] = True
        visible[-1] = False  # an item beyond the loaded batch
        expected = _expected(query, keys, values, visible)
        try:
            got = _fused(query, keys, values, visible)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as error:  # no Triton, no compiler, an unsupported GPU: the torch version serves
            return f"{type(error).__name__}: {str(error)[:300]}"
        if not got.isfinite().all():
            return f"non-finite output at {beams} beams"
        if not torch.allclose(got.float(), expected.float(), **tolerance):
            difference = (got.float() - expected.float()).abs().max().item()
            return f"differs from the reference at {beams} beams, window {window}: max abs {difference:.3g}"
    return None


def _expected(query: Tensor, keys: Tensor, values: Tensor, visible: Tensor) -> Tensor:
    """What the kernel must compute: `reference`, except that a row which sees no column is the mean of the
    window's values of its kv head. torch's math kernel (the CPU's) gives that mean too; CUDA's memory-efficient
    kernel gives zeros (see the module's docstring), so comparing those rows to SDPA on a GPU tests the backend,
    not the kernel."""
    items, heads, beams, head_dim = query.shape
    groups = heads // keys.shape[1]
    expected = reference(query, keys, values, visible).view(items, beams, heads * head_dim)
    mean = values.float().mean(dim=2).repeat_interleave(groups, dim=1).flatten(1)  # [items, heads x d]
    blind = ~visible.any(dim=-1)  # [items, beams]
    return torch.where(blind[..., None], mean[:, None].to(expected.dtype), expected).view(items * beams, -1)
