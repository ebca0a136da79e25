"""Each row's scale on LoRA's rank-r product (naturelm_core.low_rank): torch everywhere, the Triton kernel on a GPU,
and here in Triton's interpreter.

The static-decoding and recipe tests pin the torch version (plain rows by their alpha, spectral rows through the
singular basis) to the eager model on the CPU; the kernel must compute what it computes. Triton's interpreter
(TRITON_INTERPRET=1, set before Triton is imported, hence a child process) runs the same kernel on CPU tensors,
alone and inside the tiny model's static decoding, so CI checks both; the GPU test runs on the device.
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core.low_rank import fused_kernel_works, scale_rows
from tests.test_decode_attention import TINY_MODEL_IN_CHILD, _interpret


def test_without_a_gpu_the_fused_kernel_is_not_used():
    assert not fused_kernel_works(torch.device("cpu"), torch.float32)


def _case(rank: int, items: int, tokens: int, dtype: torch.dtype, seed: int = 0, block: int | None = None):
    """A column slice of a wider product (as q | k | v's rank columns are), scales as a state's per-layer view
    (one item stride over every layer's columns), odd items spectral, even items plain, orthogonal maps
    (block-diagonal in blocks of `block` columns, as q | k | v's are)."""
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(items * tokens, rank + 24, generator=generator).to(dtype)[:, 24:]
    buffer = torch.zeros(2, items, 3, rank)  # [plain | spectral, items, layers, rank columns]
    buffer[0] = torch.rand(items, 3, rank, generator=generator) + 0.5
    buffer[1] = torch.rand(items, 3, rank, generator=generator) * 2
    buffer[0, 1::2], buffer[1, ::2] = 0.0, 0.0
    scales, spectral = buffer[0, :, 1, None], buffer[1, :, 1, None]  # [items, 1, rank], strided
    block = block or rank
    maps = torch.linalg.qr(torch.randn(2, rank // block, block, block, generator=generator)).Q
    into, out_of = (torch.block_diag(*m.unbind()) for m in maps.unbind())
    return down, scales, spectral, into, out_of


def test_plain_rows_are_their_product_times_their_scale_rounded_once():
    down, scales, _, into, out_of = _case(8, 3, 2, torch.bfloat16)
    got = scale_rows(down, scales, None, into, out_of, None, fused=False)
    expected = (down.float().view(3, 2, 8) * scales).to(torch.bfloat16).flatten(0, 1)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_spectral_rows_go_through_the_basis_and_plain_rows_keep_their_numbers():
    down, scales, spectral, into, out_of = _case(8, 4, 3, torch.float32)
    got = scale_rows(down, scales, spectral, into, out_of, None, fused=False)
    per_item = down.double().view(4, 3, 8)
    through_basis = ((per_item @ into.double().T) * spectral.double()) @ out_of.double().T
    torch.testing.assert_close(got.view(4, 3, 8)[1::2], through_basis[1::2].float())
    plain_only = scale_rows(down, scales, None, into, out_of, None, fused=False)
    assert torch.equal(got.view(4, 3, 8)[::2], plain_only.view(4, 3, 8)[::2])


def test_a_lora_scale_multiplies_both_terms():
    down, scales, spectral, into, out_of = _case(8, 2, 2, torch.float32)
    once = scale_rows(down, scales, spectral, into, out_of, None, fused=False)
    torch.testing.assert_close(scale_rows(down, scales, spectral, into, out_of, 2.0, fused=False), 2 * once)
    scaling = torch.full((8,), 3.0)
    torch.testing.assert_close(scale_rows(down, scales, spectral, into, out_of, scaling, fused=True), 3 * once)


def test_the_kernel_in_tritons_interpreter_computes_what_torch_computes():
    out = _interpret(
        """
        import torch
        from naturelm_core.low_rank import scale_rows
        from tests.test_low_rank import _case
        checked = 0
        # NatureLM's q | k | v (in blocks of 32, and whole) and o ranks, a block below the kernel's smallest;
        # one row, a decode step's beams, a prompt
        cases = ((96, 32, 3, 2), (96, 96, 2, 3), (32, 32, 5, 1), (12, 4, 2, 7), (32, 32, 3, 11))
        for rank, block, items, tokens in cases:
            for dtype in (torch.float32, torch.bfloat16):
                down, scales, spectral, into, out_of = _case(rank, items, tokens, dtype, rank + tokens, block)
                for spectral_scales in (None, spectral):
                    got = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=True, block=block)
                    expected = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=False)
                    assert got.shape == expected.shape and got.dtype == dtype and got.is_contiguous()
                    plain = torch.arange(items * tokens) // tokens % 2 == 0
                    if dtype == torch.float32:  # one multiply: exact (the interpreter truncates to bf16, a GPU rounds)
                        assert torch.equal(got[plain], expected[plain])
                    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
                    torch.testing.assert_close(got.float(), expected.float(), **tolerance)
                    checked += 1
        print("ok", checked)
        """
    )
    assert out.strip() == "ok 20"


def test_static_decoding_through_the_kernel_generates_the_torch_paths_ids():
    """The tiny model's static decoding with the kernel switched on (in the interpreter) against the same with it
    off: plain alphas, layer and module recipes and spectral rows side by side, greedy and two beams; the
    kernel is what ran, with and without its spectral term."""
    out = _interpret(
        """
        from naturelm_core import low_rank, static_decoding
        calls = []
        kernel = low_rank._fused
        low_rank._fused = lambda *args: calls.append(args[2] is not None) or kernel(*args)
        model.decode_with_static_cache = True
        points = {
            "plain": [0.0, 0.5, 1.0],
            "recipes": [{"alpha": 0.8, "rank": 2}, {"layers": "linear:0.2:1", "modules": {"k_proj": 0.5}}, 0.5],
        }
        for label, alphas in points.items():
            for beams in (1, 2):
                answers = {}
                for fused in (False, True):
                    model.static_decoding = static_decoding.StaticDecoding(prompt_block=8, window_block=4)
                    model.static_decoding._llama_step(model.llm).fused_low_rank = fused
                    answers[fused] = model.generate_ids_from_embeddings(rows, PROMPTS, alphas, beams, 10)
                assert answers[True] == answers[False], (label, beams)
                assert all(len(ids) > 1 for ids in answers[True])
        assert True in calls and False in calls, "the kernel never ran with (or without) spectral rows"
        print("ok", len(calls))
        """,
        prelude=TINY_MODEL_IN_CHILD,
    )
    assert out.strip().startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rank", "items", "tokens"), [(96, 1, 1), (96, 176, 2), (32, 176, 58), (32, 64, 4)])
def test_the_fused_kernel_computes_what_torch_computes_on_a_gpu(dtype, rank, items, tokens):
    assert fused_kernel_works(torch.device("cuda"), dtype)
    case = [t.cuda() for t in _case(rank, items, tokens, dtype, items, block=32)]
    down, scales, spectral, into, out_of = case
    for spectral_scales in (None, spectral):
        got = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=True, block=32)
        expected = scale_rows(down, scales, spectral_scales, into, out_of, None, fused=False)
        plain = (torch.arange(items * tokens, device="cuda") // tokens) % 2 == 0
        assert torch.equal(got[plain], expected[plain])
        tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
        torch.testing.assert_close(got.float(), expected.float(), **tolerance)
