"""The start-up checks' frame: a check runs on a CUDA device only, and one that raises means the torch version."""

from __future__ import annotations

import torch

from naturelm_core import kernel_checks

CUDA = torch.device("cuda")  # a device object only: no GPU is touched, the checks below are stand-ins


def test_a_check_runs_on_cuda_and_its_answer_is_the_answer():
    asked = []

    def check(device, dtype):
        asked.append((device, dtype))
        return dtype == torch.bfloat16

    assert kernel_checks.passes(check, CUDA, torch.bfloat16)
    assert not kernel_checks.passes(check, CUDA, torch.float32)
    assert asked == [(CUDA, torch.bfloat16), (CUDA, torch.float32)]


def test_elsewhere_no_check_runs():
    def check(device, dtype):
        raise AssertionError("a CPU check ran")

    assert not kernel_checks.passes(check, torch.device("cpu"), torch.float32)


def test_a_check_that_raises_fails_without_raising():
    def check(device, dtype):
        raise RuntimeError("Triton: no compiler")

    assert not kernel_checks.passes(check, CUDA, torch.bfloat16)
