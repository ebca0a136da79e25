"""The frame of a Triton kernel's start-up check: where a check may run, and what a failure to run means.

Why: each kernel module compares its kernel with its torch version before a step uses it; that the check runs on a
CUDA GPU only and that any exception while it runs (no Triton, no compiler, an unsupported GPU, a refused launch)
means "use the torch version" is the same rule for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def passes(check: Callable[[torch.device, torch.dtype], bool], device: torch.device, dtype: torch.dtype) -> bool:
    """`check(device, dtype)` on a CUDA device; False elsewhere, and False where the check raises."""
    if device.type != "cuda":
        return False
    try:
        return check(device, dtype)
    except Exception:  # no Triton, no compiler, an unsupported GPU, a refused launch: the torch version serves
        return False
