"""Llama's RMSNorm, x / sqrt(mean(x^2) + eps) * weight: one Triton kernel on CUDA, torch elsewhere.

Why: a decode step runs 65 of them (two per layer and the last), each over one 4,096-value row at one row
per item. torch's fused kernel took 6.4 µs a call there on an H100 (0.41 ms of a 7.0 ms step; benchmarks/gpu.py
profile, 2026-12-06 18:47Z), a latency, not a bandwidth, since a row is 8 KB. One program per row reads it
once. The torch version is the reference and runs on the CPU; `fused_kernel_works` checks the kernel against
it before it is used.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor, eps: float, fused: bool) -> Tensor:
    """RMSNorm over the last dimension of `x` [rows, width]; with `fused`, in float32, rounded once."""
    if not fused:
        return nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    rows, width = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    block = 1 << (width - 1).bit_length()
    _kernel()[(rows,)](x, weight, out, x.stride(0), width, eps, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_rows(x, weight, out, row_stride, width, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        columns = tl.arange(0, BLOCK)
        inside = columns < width
        values = tl.load(x + row * row_stride + columns, mask=inside, other=0.0).to(tl.float32)
        scale = tl.rsqrt(tl.sum(values * values, axis=0) / width + eps)
        gain = tl.load(weight + columns, mask=inside, other=0.0).to(tl.float32)
        tl.store(out + row * width + columns, (values * scale * gain).to(out.dtype.element_ty), mask=inside)

    return rms_norm_rows


def fused_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton kernel runs here and computes what torch computes (to rounding), on rows of Llama's
    width and of a width that is not a power of two, one of them a strided view."""
    if device.type != "cuda":
        return False
    generator = torch.Generator(device=device).manual_seed(0)
    for width in (4096, 4096 + 77):
        x = torch.randn(5, 2 * width, generator=generator, device=device, dtype=dtype)[:, :width] * 3
        weight = torch.rand(width, generator=generator, device=device, dtype=dtype) + 0.5
        expected = rms_norm(x, weight, 1e-5, fused=False)
        try:
            got = rms_norm(x, weight, 1e-5, fused=True)
            torch.cuda.synchronize(device)
        except Exception:  # no Triton, no compiler, an unsupported GPU: the torch version serves
            return False
        tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
        if not torch.allclose(got.float(), expected.float(), **tolerance):
            return False
    return True
