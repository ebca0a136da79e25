"""RMSNorm (naturelm_core.rmsnorm): torch everywhere, the Triton kernel on a GPU, and here in Triton's interpreter.

The static-decoding tests pin the torch version to transformers' Llama on the CPU; the kernel must compute
what it computes. Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported, hence a child
process) runs the same kernel on CPU tensors, so CI checks it too; the GPU test runs on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from naturelm_core.rmsnorm import fused_kernel_works, rms_norm

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_the_fused_kernel_is_not_used():
    assert not fused_kernel_works(torch.device("cpu"), torch.float32)


def test_the_torch_version_is_llamas_rmsnorm():
    torch.manual_seed(0)
    x, weight = torch.randn(3, 64), torch.rand(64) + 0.5
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    torch.testing.assert_close(rms_norm(x, weight, 1e-5, fused=False), expected)


def test_the_kernel_in_tritons_interpreter_computes_what_torch_computes():
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from naturelm_core.rmsnorm import rms_norm
        torch.manual_seed(0)
        for width in (64, 100):  # a power of two, and a width the block overhangs
            x = torch.randn(4, 2 * width)[:, :width] * 3  # a strided view, as the last token's rows are
            weight = torch.rand(width) + 0.5
            fused = rms_norm(x, weight, 1e-5, fused=True)
            torch.testing.assert_close(fused, rms_norm(x, weight, 1e-5, fused=False), atol=1e-5, rtol=1e-5)
            assert fused.shape == (4, width) and fused.is_contiguous()
        print("ok")
        """
    )
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 352, 11_264])
def test_the_fused_kernel_computes_what_torch_computes_on_a_gpu(dtype, rows):
    assert fused_kernel_works(torch.device("cuda"), dtype)
    generator = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(rows, 4096, generator=generator, device="cuda", dtype=dtype) * 3
    weight = torch.rand(4096, generator=generator, device="cuda", dtype=dtype) + 0.5
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    torch.testing.assert_close(
        rms_norm(x, weight, 1e-5, fused=True).float(), rms_norm(x, weight, 1e-5, fused=False).float(), **tolerance
    )
