"""A one-row decode step's products (an Explore answer) as Triton matrix-vector kernels with the small kernels
around them folded in: one Triton kernel per product on CUDA, torch elsewhere.

Why: an Explore answer ran at 1.40x its bound (issue 23 asks 1.25x; H100, 2026-12-07). A one-row step took 6.62
ms against 5.02 ms of weight reads: per layer cuBLAS's five products about 156 µs, where their bytes take 144 at
the copy rate, and 13 small kernels 34 µs (two RMSNorms, three split-K reductions, the SwiGLU gate, o's LoRA A
product among them). benchmarks/one_row_products.py (12:54Z, H100) timed this kernel's loop, 4 rows x 1,024
columns a program, against cuBLAS: q | k | v 19.0 vs 21.0 µs, o 13.6 vs 16.0, down 40.6 vs 42.8, gate and up 40.4
vs 40.3 each, and q | k | v with its RMSNorm 20.5 as one kernel vs 23.3 as two. Each form here takes more of the
step's small kernels with it:

- `linear`: W n(x), the norm n optional; with `second`, that matrix's rows follow W's, read in the same pass over
  x (o with its LoRA A: no product and no split-K reduction of their own); with `residual`, the residual stream
  added to the first outputs (an epilogue of the sums, no read-modify-write kernel).
- `gated`: silu(gate n(x)) * up n(x), SwiGLU's hidden: one pass over both matrices and the norm, no gate kernel.

n(x) is Llama's RMSNorm, gain * x / rms(x); its scale is applied to the float32 sums at the end (the row's sum of
squares is gathered in the same pass), so x is rounded once, where the step's torch path rounds the norm's output
to bf16 before the product. `fused_kernel_works` checks the kernels against the torch versions before a step uses
them. Where every block of rows and columns is full (Llama's widths), the loads carry no masks: the library kernel
with masks ran down 44.9 µs against cuBLAS's 43.3 (16:24Z, H100), where the benchmark's unmasked copy of it had run
40.6 against 42.8 (12:54Z).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from naturelm_core import dependent_launch, kernel_checks, rmsnorm

Norm = tuple[Tensor, float]  # an RMSNorm's gain and epsilon


@dataclass(frozen=True)
class Launch:
    """A program's share of the work. The default was the fastest of five on every one-row product of
    Llama-3.1-8B (benchmarks/one_row_products.py, which compares them; H100, 2026-12-07 12:54Z)."""

    block_rows: int = 4  # output rows a program computes
    block_columns: int = 1024  # input columns it reads per step of its loop (fewer where x is narrower)
    num_warps: int = 4


def linear(
    x: Tensor,
    weight: Tensor,
    fused: bool,
    second: Tensor | None = None,
    residual: Tensor | None = None,
    norm: Norm | None = None,
    launch: Launch = Launch(),
    dependent: bool = False,
) -> Tensor:
    """[1, rows of weight (+ rows of second)]: weight n(x) (then second n(x)), plus `residual` [1, R] on the first
    R outputs where given; n is RMSNorm with `norm` = (gain, eps), or nothing. `dependent`: launched as a dependent of
    the kernel before it (naturelm_core.dependent_launch)."""
    if not fused:
        return _reference_linear(x, weight, second, residual, norm)
    rows = weight.shape[0] + (0 if second is None else second.shape[0])
    out = torch.empty(1, rows, dtype=x.dtype, device=x.device)
    _launch(x, weight, second, residual, norm, out, gated=False, launch=launch, dependent=dependent)
    return out


def gated(
    x: Tensor, gate: Tensor, up: Tensor, fused: bool, norm: Norm | None = None, dependent: bool = False
) -> Tensor:
    """[1, rows of gate]: silu(gate n(x)) * (up n(x)), Llama's SwiGLU hidden; `dependent` as `linear` takes it."""
    if not fused:
        normed = x if norm is None else rmsnorm.rms_norm(x, *norm, False)
        return nn.functional.silu(nn.functional.linear(normed, gate)) * nn.functional.linear(normed, up)
    out = torch.empty(1, gate.shape[0], dtype=x.dtype, device=x.device)
    _launch(x, gate, up, None, norm, out, gated=True, dependent=dependent)
    return out


def _reference_linear(
    x: Tensor, weight: Tensor, second: Tensor | None, residual: Tensor | None, norm: Norm | None
) -> Tensor:
    normed = x if norm is None else rmsnorm.rms_norm(x, *norm, False)
    out = nn.functional.linear(normed, weight if second is None else torch.cat((weight, second)))
    if residual is not None:
        out[:, : residual.shape[1]] += residual
    return out


def _launch(
    x: Tensor,
    first: Tensor,
    second: Tensor | None,
    residual: Tensor | None,
    norm: Norm | None,
    out: Tensor,
    gated: bool,
    launch: Launch = Launch(),
    dependent: bool = False,
) -> None:
    columns = x.shape[-1]
    if x.shape != (1, columns) or first.shape[1] != columns or (second is not None and second.shape[1] != columns):
        raise ValueError(f"one row x [1, K] and matrices [N, K]: got x {tuple(x.shape)}, weight {tuple(first.shape)}")
    first, x = first.contiguous(), x.contiguous()
    stacked = second is not None and not gated
    second = first if second is None else second.contiguous()
    block_columns = min(launch.block_columns, 1 << (columns - 1).bit_length())
    _kernel()[(-(-out.shape[1] // launch.block_rows),)](
        x,
        first,
        second,
        x if norm is None else norm[0],
        x if residual is None else residual,
        out,
        columns,
        first.shape[0],
        out.shape[1],
        0 if residual is None else residual.shape[1],
        0.0 if norm is None else float(norm[1]),
        NORM=norm is not None,
        EVEN=columns % block_columns == 0 and out.shape[1] % launch.block_rows == 0,
        SECOND=stacked,
        RESIDUAL=residual is not None,
        GATED=gated,
        BLOCK_ROWS=launch.block_rows,
        BLOCK_COLUMNS=block_columns,
        num_warps=launch.num_warps,
        **dependent_launch.options(dependent),
    )


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (Triton is imported only where a GPU runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def one_row_product(
        x,
        first,
        second,
        norm_weight,
        residual,
        out,
        columns,
        first_rows,
        total_rows,
        residual_rows,
        eps,
        NORM: tl.constexpr,
        EVEN: tl.constexpr,  # every block of rows and columns full: loads without masks
        SECOND: tl.constexpr,
        RESIDUAL: tl.constexpr,
        GATED: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLUMNS: tl.constexpr,
        DEPENDENT: tl.constexpr,  # launched as a dependent: wait for the kernel before it
    ):
        if DEPENDENT:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        live = rows < total_rows
        wide = rows.to(tl.int64)
        if SECOND:  # rows past the first matrix's come from the second, in order
            in_first = rows < first_rows
            starts = tl.where(in_first, first + wide * columns, second + (wide - first_rows) * columns)
        else:
            starts = first + wide * columns
        if GATED:
            up_starts = second + wide * columns
            up_sums = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
        sums = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
        squares = tl.zeros((BLOCK_COLUMNS,), dtype=tl.float32)
        for start in range(0, columns, BLOCK_COLUMNS):
            column = start + tl.arange(0, BLOCK_COLUMNS)
            inside = column < columns
            where = live[:, None] & inside[None, :]
            if EVEN:
                values = tl.load(x + column).to(tl.float32)
            else:
                values = tl.load(x + column, mask=inside, other=0.0).to(tl.float32)
            if NORM:
                squares += values * values
                if EVEN:
                    values = values * tl.load(norm_weight + column).to(tl.float32)
                else:
                    values = values * tl.load(norm_weight + column, mask=inside, other=0.0).to(tl.float32)
            if EVEN:
                block = tl.load(starts[:, None] + column[None, :]).to(tl.float32)
            else:
                block = tl.load(starts[:, None] + column[None, :], mask=where, other=0.0).to(tl.float32)
            sums += tl.sum(block * values[None, :], axis=1)
            if GATED:
                if EVEN:
                    block = tl.load(up_starts[:, None] + column[None, :]).to(tl.float32)
                else:
                    block = tl.load(up_starts[:, None] + column[None, :], mask=where, other=0.0).to(tl.float32)
                up_sums += tl.sum(block * values[None, :], axis=1)
        if NORM:
            scale = tl.rsqrt(tl.sum(squares, axis=0) / columns + eps)
            sums = sums * scale
            if GATED:
                up_sums = up_sums * scale
        if GATED:
            sums = sums / (1.0 + tl.exp(-sums)) * up_sums
        if RESIDUAL:
            sums += tl.load(residual + rows, mask=rows < residual_rows, other=0.0).to(tl.float32)
        tl.store(out + rows, sums.to(out.dtype.element_ty), mask=live)

    return one_row_product


def fused_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernels run here and compute what torch computes (to rounding): every form, on widths that
    are and are not multiples of the blocks."""
    return kernel_checks.passes(_agrees, device, dtype)


def _agrees(device: torch.device, dtype: torch.dtype) -> bool:
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * scale

    tolerance = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for columns, rows, extra in ((4096, 4096, 16), (1000, 77, 5)):
        norm = (torch.rand(columns, generator=generator, device=device, dtype=dtype) + 0.5, 1e-5)
        x, residual = random(1, columns, scale=3.0), random(1, rows)
        weight, up = random(rows, columns, scale=0.02), random(rows, columns, scale=0.02)
        second = random(extra, columns, scale=0.02)
        cases = (
            (linear, (x, weight), {"norm": norm}),
            (linear, (x, weight), {"second": second, "residual": residual}),
            (gated, (x, weight, up), {"norm": norm}),
        )
        for form, arguments, options in cases:
            got = form(*arguments, fused=True, **options)
            expected = form(*arguments, fused=False, **options)
            torch.cuda.synchronize(device)
            if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), **tolerance):
                return False
    return True


def dependent_launch_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether one-row products chained as dependents give, bit for bit, what the same kernels give launched one after
    another: eagerly and replayed from a CUDA graph."""
    return dependent_launch.supported(device) and kernel_checks.passes(_agrees_launched_as_dependents, device, dtype)


def _agrees_launched_as_dependents(device: torch.device, dtype: torch.dtype) -> bool:
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * 0.05

    x, first, down = random(1, 4096), random(4096, 4096), random(4096, 8192)
    gate, up = random(8192, 4096), random(8192, 4096)
    norm = (torch.rand(4096, generator=generator, device=device, dtype=dtype) + 0.5, 1e-5)

    def chain(dependent: bool) -> Tensor:
        hidden = linear(x, first, True, residual=x, norm=norm, dependent=dependent)
        inner = gated(hidden, gate, up, True, norm=norm, dependent=dependent)
        return linear(inner, down, True, residual=hidden, dependent=dependent)

    expected = chain(False)
    if not torch.equal(chain(True), expected):
        return False
    chain(True)  # compiled before capture
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain(True)
    x.mul_(-1.0)  # new input, so the replay cannot pass on the capture's own output
    expected = chain(False)
    graph.replay()
    return torch.equal(captured, expected)
