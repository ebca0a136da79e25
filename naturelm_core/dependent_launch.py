"""Programmatic dependent launch of the one-row step's Triton kernels (Hopper and later GPUs).

Why: at one row a decode step is a chain of ~230 short kernels (7 a layer), each a few to ~45 µs, and between two of
them the GPU drains the first and then places the second's programs. Launched as a dependent, a kernel's programs are
placed while the kernel before it finishes and wait inside the kernel (Triton's `gdc_wait`) until its results are
visible; each kernel then lets the next one be placed (`gdc_launch_dependents`) once its own wait is over.

A kernel launched with `options(True)` must wait (`DEPENDENT` true) before it reads anything an earlier kernel
writes; the step's kernels wait first thing. naturelm_core.one_row.dependent_launch_works checks the mechanism on this
GPU (eagerly and under a captured CUDA graph, the way a decode step runs) before a step uses it.
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
