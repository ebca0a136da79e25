"""host_copies.to_device: the same tensor as `.to(device)`, queued from pinned memory on a GPU."""

from __future__ import annotations

import pytest
import torch

from naturelm_core.host_copies import to_device


def test_on_the_cpu_it_is_a_plain_move():
    values = torch.arange(6).view(2, 3)
    moved = to_device(values, "cpu")
    assert torch.equal(moved, values) and moved.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_host_tensor_reaches_the_gpu_unchanged_while_the_gpu_is_busy():
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):  # ~0.1 s of queued work the copy must not wait for, nor overtake
        busy = busy @ busy / 64
    values = torch.randn(3, 5).to(torch.float64)
    moved = to_device(values, "cuda")
    assert not torch.cuda.current_stream().query()  # the host came back with the queue still running
    assert moved.device.type == "cuda" and moved.dtype == torch.float64
    assert torch.equal(moved.cpu(), values)
    gpu_tensor = torch.ones(2, device="cuda")
    assert to_device(gpu_tensor, "cuda") is gpu_tensor
