"""Rotary embedding + KV-cache write (naturelm_core.rotary_store) against transformers' Llama rotary code.

The torch version runs everywhere (CI); the Triton kernel on a GPU and in Triton's interpreter (CPU tensors, a
child process), where it must write what the torch version writes, the query in the same memory layout.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from naturelm_core.rotary_store import RotaryStore, fused_kernel_works
from tests.test_decode_attention import _interpret

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
    assert fused[0].transpose(1, 2).is_contiguous()  # [items, length, heads, d] in memory, as the torch version's


def test_the_kernel_in_tritons_interpreter_writes_what_the_torch_version_writes_in_its_layout():
    out = _interpret(
        """
        import torch
        from tests.test_rotary_store import _case, _run
        for items, length in ((3, 2), (1, 1), (2, 1)):
            qkv, cos, _, signed_sin, positions, columns = _case("cpu", torch.float32, items, length)
            reference = _run(qkv, cos, signed_sin, positions, columns, fused=False)
            fused = _run(qkv, cos, signed_sin, positions, columns, fused=True)
            for got, want in zip(fused, reference, strict=True):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert fused[0].transpose(1, 2).is_contiguous(), fused[0].stride()  # [items, length, heads, d]
            print("checked", items, length)
        """
    )
    assert out.count("checked") == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's attention runs on a GPU only")
def test_cudnn_attention_writes_a_prompts_output_in_its_querys_layout():
    """Why the kernel writes the query [items, length, heads, d] in memory: the prompt's attention output then comes
    in that layout too and is read as [tokens, heads x d] with no copy (73 MB a layer at a 176-item sweep batch)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    items, length, columns = 3, 5, 7
    query = torch.randn(items, length, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    keys, values = (torch.randn(items, 2, columns, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    bias = torch.zeros(items, 1, length, columns, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=bias, enable_gqa=True)
    assert out.transpose(1, 2).is_contiguous()
