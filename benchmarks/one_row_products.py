"""One-row products of a decode step: cuBLAS against a Triton matrix-vector kernel, with RMSNorm folded in or not.

    python3 benchmarks/one_row_products.py --out DIR

Why: an Explore answer runs at 1.40x the bound issue 23 asks 1.25x of (H100, 2026-12-07). A one-row step takes
6.62 ms against 5.02 ms of weight reads: per layer the five products take about 156 µs where their bytes take
144 at the copy rate, and 13 small kernels 34 µs (two RMSNorms, three split-K reductions of cuBLAS among them).
Folding those kernels into the products needs a product of our own, so the first question is whether one reaches
the copy rate on these shapes at all. Here each of Llama-3.1-8B's one-row products (q | k | v with their LoRA A,
o, gate, up, down) is timed as cuBLAS runs it and as `matrix_vector` runs it under a few launch shapes, and the
q | k | v product with its RMSNorm before it, as two kernels and as one (the norm's scale applied to the
product's sums at the end: a row's sum of squares is gathered in the same pass over x). Each candidate runs over
`--layers` distinct weights in one CUDA graph, so nothing is served from L2; the copy rate is measured the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode_parts import HEAD_DIM, HIDDEN, KV_HEADS, MLP, RANK, graph_ms

EPS = 1e-5
LAUNCHES = ((8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 256, 8), (4, 1024, 4))  # rows, columns, warps


def matrix_vector(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    block_rows: int = 16,
    block_columns: int = 256,
    num_warps: int = 4,
) -> torch.Tensor:
    """weight @ x for one row x [K] (weight [N, K], N a multiple of `block_rows`, K of `block_columns`), in
    float32 sums rounded once; with `norm_weight`, weight @ rms_norm(x) as Llama's RMSNorm defines it, in the
    same pass: sum(w * x * g) / rms(x), the norm's scale applied to the sums at the end."""
    rows, columns = weight.shape
    if rows % block_rows or columns % block_columns or x.shape != (columns,):
        raise ValueError(
            f"weight {tuple(weight.shape)} and x {tuple(x.shape)} do not tile by {block_rows} x {block_columns}"
        )
    out = torch.empty(rows, device=x.device, dtype=x.dtype)
    norm = norm_weight is not None
    _kernel()[(rows // block_rows,)](
        x,
        weight,
        norm_weight if norm else x,
        out,
        columns,
        weight.stride(0),
        EPS,
        NORM=norm,
        BLOCK_ROWS=block_rows,
        BLOCK_COLUMNS=block_columns,
        num_warps=num_warps,
    )
    return out


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def one_row_product(
        x,
        weight,
        norm_weight,
        out,
        columns,
        row_stride,
        eps,
        NORM: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLUMNS: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        sums = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
        squares = tl.zeros((BLOCK_COLUMNS,), dtype=tl.float32)
        for start in range(0, columns, BLOCK_COLUMNS):
            column = start + tl.arange(0, BLOCK_COLUMNS)
            values = tl.load(x + column).to(tl.float32)
            if NORM:
                squares += values * values
                values = values * tl.load(norm_weight + column).to(tl.float32)
            block = tl.load(weight + rows[:, None].to(tl.int64) * row_stride + column[None, :]).to(tl.float32)
            sums += tl.sum(block * values[None, :], axis=1)
        if NORM:
            sums = sums * tl.rsqrt(tl.sum(squares, axis=0) / columns + eps)
        tl.store(out + rows, sums.to(out.dtype.element_ty))

    return one_row_product


def reference(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None) -> torch.Tensor:
    """What the decode step computes today: RMSNorm in float32 rounded to x's dtype, times its weight, then the
    product."""
    if norm_weight is not None:
        normed = (x.float() * torch.rsqrt(x.float().pow(2).mean() + EPS)).to(x.dtype)
        x = norm_weight * normed
    return F.linear(x[None], weight)[0]


def candidates(layers: int) -> dict[str, Any]:
    """Each product's µs per layer: cuBLAS, and `matrix_vector` under each launch shape; the copy rate's µs for
    the same bytes; and the q | k | v product with its norm as two kernels and as one."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    shapes = {
        "qkv_with_lora_a": (HIDDEN + 2 * KV_HEADS * HEAD_DIM + 3 * RANK, HIDDEN),
        "o": (HIDDEN, HIDDEN),
        "gate": (MLP, HIDDEN),
        "up": (MLP, HIDDEN),
        "down": (HIDDEN, MLP),
    }
    result: dict[str, Any] = {"copy_gb_per_s": _copy_rate(layers)}
    for name, (rows, columns) in shapes.items():
        weights = [torch.randn(rows, columns, device=device, dtype=dtype) * 0.02 for _ in range(layers)]
        x = torch.randn(columns, device=device, dtype=dtype)
        bytes_read = rows * columns * 2
        timings: dict[str, Any] = {"copy_rate_us": bytes_read / result["copy_gb_per_s"] / 1e3}
        timings["cublas_us"] = (
            1e3 * graph_ms(lambda w=weights, x=x: [F.linear(x[None], w[i]) for i in range(layers)]) / layers
        )
        for block_rows, block_columns, warps in LAUNCHES:
            launch = {"block_rows": block_rows, "block_columns": block_columns, "num_warps": warps}
            label = f"triton_{block_rows}x{block_columns}_w{warps}"
            error = (matrix_vector(x, weights[0], **launch).float() - reference(x, weights[0]).float()).abs().max()
            timings[f"{label}_max_abs_error"] = float(error)
            timings[f"{label}_us"] = (
                1e3
                * graph_ms(
                    lambda w=weights, x=x, launch=launch: [matrix_vector(x, w[i], **launch) for i in range(layers)]
                )
                / layers
            )
        result[name] = timings
    result["qkv_with_its_norm"] = _with_norm(layers)
    return result


def _with_norm(layers: int) -> dict[str, float]:
    device, dtype = torch.device("cuda"), torch.bfloat16
    from naturelm_core import rmsnorm

    rows = HIDDEN + 2 * KV_HEADS * HEAD_DIM + 3 * RANK
    weights = [torch.randn(rows, HIDDEN, device=device, dtype=dtype) * 0.02 for _ in range(layers)]
    norms = [torch.rand(HIDDEN, device=device, dtype=dtype) + 0.5 for _ in range(layers)]
    x = torch.randn(HIDDEN, device=device, dtype=dtype)
    fused_norm = rmsnorm.fused_kernel_works(device, dtype)

    def separate() -> None:
        for i in range(layers):
            F.linear(rmsnorm.rms_norm(x[None], norms[i], EPS, fused_norm), weights[i])

    def folded() -> None:
        for i in range(layers):
            matrix_vector(x, weights[i], norms[i], 16, 256, 4)

    error = (matrix_vector(x, weights[0], norms[0]).float() - reference(x, weights[0], norms[0]).float()).abs().max()
    return {
        "norm_then_cublas_us": 1e3 * graph_ms(separate) / layers,
        "folded_triton_16x256_w4_us": 1e3 * graph_ms(folded) / layers,
        "folded_max_abs_error": float(error),
    }


def _copy_rate(layers: int) -> float:
    """GB/s of a device-to-device copy of one layer's gate weight per layer, in a graph (read + write counted)."""
    sources = [torch.randn(MLP, HIDDEN, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
    targets = [torch.empty_like(source) for source in sources]
    ms = graph_ms(lambda: [t.copy_(s) for t, s in zip(targets, sources, strict=True)]) / layers
    return 2 * sources[0].numel() * 2 / (ms * 1e-3) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error(
            "it times kernels on a CUDA GPU and none is here (its kernel's results are checked on the CPU by "
            "tests/test_benchmark_one_row_products.py)"
        )
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **candidates(args.layers)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "one_row_products.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
