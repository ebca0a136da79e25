"""Programmatic dependent launch of the one-row step's Triton kernels (Hopper and later GPUs).

Why: at one row a decode step is a chain of ~230 short kernels (7 a layer), each a few to ~45 µs, and between two of
them the GPU drains the first and then places the second's programs. Launched as a dependent, a kernel's programs are
placed while the kernel before it finishes and wait inside the kernel (Triton's `gdc_wait`) until its results are
visible; each kernel then lets the next one be placed (`gdc_launch_dependents`) once its own wait is over.

A kernel launched with `options(True)` must wait (`DEPENDENT` true) before it reads anything an earlier kernel
writes; the step's kernels wait first thing. `works` checks the mechanism on this GPU (eagerly and under a captured
CUDA graph, the way a decode step runs) before a step uses it.
"""

from __future__ import annotations

import torch


def supported(device: torch.device) -> bool:
    """A CUDA GPU of compute capability 9 or later, and a Triton that launches dependents (3.3 and later)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__


def options(dependent: bool) -> dict[str, bool]:
    """A kernel's launch arguments: its `DEPENDENT` constant and, where on, Triton's launch option."""
    return {"DEPENDENT": True, "launch_pdl": True} if dependent else {"DEPENDENT": False}


def works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether one-row products chained as dependents give, bit for bit, what the same kernels give launched one after
    another: eagerly and replayed from a CUDA graph."""
    if not supported(device):
        return False
    try:
        return _agrees(device, dtype)
    except Exception:  # a driver or Triton that refuses the launch: the kernels run without it
        return False


def _agrees(device: torch.device, dtype: torch.dtype) -> bool:
    from naturelm_core import one_row

    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * 0.05

    x, first, gate, up, down = (
        random(1, 4096),
        random(4096, 4096),
        random(8192, 4096),
        random(8192, 4096),
        random(4096, 8192),
    )
    norm = (torch.rand(4096, generator=generator, device=device, dtype=dtype) + 0.5, 1e-5)

    def chain(dependent: bool) -> torch.Tensor:
        hidden = one_row.linear(x, first, True, residual=x, norm=norm, dependent=dependent)
        inner = one_row.gated(hidden, gate, up, True, norm=norm, dependent=dependent)
        return one_row.linear(inner, down, True, residual=hidden, dependent=dependent)

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
