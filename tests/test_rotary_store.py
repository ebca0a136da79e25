"""Rotary embedding + KV-cache write (naturelm_core.rotary_store) against transformers' Llama rotary code.

The torch version runs everywhere (CI); the Triton kernel only on a GPU, where it must write what the
torch version writes (the GPU test skips elsewhere; the decode benchmark runs it on the device).
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from naturelm_core.rotary_store import RotaryStore, fused_kernel_works

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def _case(device: str = "cpu", dtype: torch.dtype = torch.float32, items: int = 3, length: int = 2):
    generator = torch.Generator(device=device).manual_seed(1)
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    # A wider tensor's first columns: the q/k/v product's output is a strided view in the decode step.
    qkv = torch.randn(items * length, width + 7, generator=generator, device=device, dtype=dtype)[:, :width]
    angles = torch.rand(12, HEAD_DIM // 2, generator=generator, device=device) * 6.28
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1).to(dtype)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1).to(dtype)
    signed_sin = torch.cat((-sin[:, : HEAD_DIM // 2], sin[:, HEAD_DIM // 2 :]), dim=-1)
    positions = torch.tensor([[3, 4], [9, 10], [0, 1]], device=device)[:items, :length]
    columns = torch.tensor([5, 7], device=device)[:length]
    return qkv, cos, sin, signed_sin, positions, columns


def _run(qkv, cos, signed_sin, positions, columns, fused: bool):
    items = positions.shape[0]
    keys = torch.zeros(items, KV_HEADS, 9, HEAD_DIM, device=qkv.device, dtype=qkv.dtype)
    values = torch.zeros_like(keys)
    store = RotaryStore(cos, signed_sin, positions, columns, HEADS, KV_HEADS, HEAD_DIM, fused)
    return store(qkv, keys, values), keys, values


def test_the_torch_version_rotates_as_llama_and_writes_the_cache_columns():
    qkv, cos, sin, signed_sin, positions, columns = _case()
    query, keys, values = _run(qkv, cos, signed_sin, positions, columns, fused=False)
    items, length = positions.shape
    q = qkv[:, : HEADS * HEAD_DIM].reshape(items, length, HEADS, HEAD_DIM).transpose(1, 2)
    k = qkv[:, HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM].reshape(items, length, KV_HEADS, HEAD_DIM)
    v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM :].reshape(items, length, KV_HEADS, HEAD_DIM).transpose(1, 2)
    expected_q, expected_k = apply_rotary_pos_emb(q, k.transpose(1, 2), cos[positions], sin[positions])
    torch.testing.assert_close(query, expected_q)
    torch.testing.assert_close(keys[:, :, columns], expected_k)
    torch.testing.assert_close(values[:, :, columns], v)
    untouched = [c for c in range(keys.shape[2]) if c not in columns.tolist()]
    assert not keys[:, :, untouched].any() and not values[:, :, untouched].any()


def test_without_a_gpu_the_fused_kernel_is_not_used():
    assert not fused_kernel_works(torch.device("cpu"), torch.float32, HEADS, KV_HEADS, HEAD_DIM)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("items,length", [(3, 2), (1, 1), (2, 1)])
def test_the_fused_kernel_writes_what_the_torch_version_writes(dtype, items, length):
    assert fused_kernel_works(torch.device("cuda"), dtype, HEADS, KV_HEADS, HEAD_DIM)
    qkv, cos, _, signed_sin, positions, columns = _case("cuda", dtype, items, length)
    expanded = positions[:, :1].expand(-1, length)  # the decode step's positions: one per item, every beam
    reference = _run(qkv, cos, signed_sin, expanded, columns, fused=False)
    fused = _run(qkv, cos, signed_sin, expanded, columns, fused=True)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tolerance)
    assert fused[0].is_contiguous()  # attention reads it without a copy
