"""The SwiGLU gate (naturelm_core.swiglu): torch everywhere, the Triton kernel on a GPU only.

The static-decoding tests pin the torch version to transformers' Llama MLP on the CPU; here the
kernel must compute what it computes (the GPU test skips elsewhere; it is run on the device).
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core.swiglu import BLOCK, fused_kernel_works, silu_mul


def test_without_a_gpu_the_fused_kernel_is_not_used():
    assert not fused_kernel_works(torch.device("cpu"), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 14336), (352, 14336), (5, BLOCK - 3)])
def test_the_fused_kernel_computes_what_torch_computes_in_place(dtype, shape):
    assert fused_kernel_works(torch.device("cuda"), dtype)
    generator = torch.Generator(device="cuda").manual_seed(2)
    gate = torch.randn(shape, generator=generator, device="cuda", dtype=dtype) * 3
    up = torch.randn(shape, generator=generator, device="cuda", dtype=dtype)
    expected = silu_mul(gate, up, fused=False)
    result = silu_mul(gate, up, fused=True)
    assert result.data_ptr() == gate.data_ptr()
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    torch.testing.assert_close(result.float(), expected.float(), **tolerance)
