"""One-row products of a decode step: cuBLAS against a Triton matrix-vector kernel, with RMSNorm folded in or not.

    python3 benchmarks/one_row_products.py --out DIR

Why: an Explore answer runs at 1.40x the bound issue 23 asks 1.25x of (H100, 2026-12-07). A one-row step takes
6.62 ms against 5.02 ms of weight reads: per layer the five products take about 156 µs where their bytes take
144 at the copy rate, and 13 small kernels 34 µs (two RMSNorms, three split-K reductions of cuBLAS among them).
Folding those kernels into the products needs a product of our own, so the first question is whether one reaches
the copy rate on these shapes at all. Here each of Llama-3.1-8B's one-row products (q | k | v with their LoRA A,
o, gate, up, down) is timed as cuBLAS runs it and as the decode step's own kernel (naturelm_core.one_row, since
session 14) runs it under a few launch shapes, and the
q | k | v product with its RMSNorm before it, as two kernels and as one (the norm's scale applied to the
product's sums at the end: a row's sum of squares is gathered in the same pass over x). Each candidate runs over
`--layers` distinct weights in one CUDA graph, so nothing is served from L2; the copy rate is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode_parts import HEAD_DIM, HIDDEN, KV_HEADS, MLP, RANK, graph_ms
from naturelm_core import one_row

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
    """weight @ x for one row x [K] as the decode step's kernel computes it (naturelm_core.one_row.linear) under
    the given launch shape; with `norm_weight`, weight @ rms_norm(x), the norm folded into the same pass."""
    norm = None if norm_weight is None else (norm_weight, EPS)
    launch = one_row.Launch(block_rows, block_columns, num_warps)
    return one_row.linear(x[None], weight, True, norm=norm, launch=launch)[0]


def reference(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None) -> torch.Tensor:
    """What the decode step computed before naturelm_core.one_row: RMSNorm rounded to x's dtype, then the
    product (the kernel's torch version)."""
    norm = None if norm_weight is None else (norm_weight, EPS)
    return one_row.linear(x[None], weight, False, norm=norm)[0]


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
