"""Host-to-GPU copies that leave the host free while the GPU works through its queue.

Why: torch copies a pageable CPU tensor to the GPU synchronously, so the host waits until everything already
queued on the stream has run. Before a sweep batch's prefill the queue holds the audio encoder (11-21 ms on an
H100): the copy of the batch's merges made the host sit through it, and then the GPU sat idle while the host
built the prompts and the decoder (about 13 ms of a 16 x 11 sweep's 490, 2026-12-07 12:53Z probe). From
pinned memory the copy is queued like a kernel and the host goes on; torch's pinned-memory cache keeps the
buffer until the copy has run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """`tensor.to(device)`, queued without waiting where it goes from the host to a GPU."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
