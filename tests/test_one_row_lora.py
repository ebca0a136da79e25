"""A one-row step's LoRA term in one kernel (naturelm_core/one_row_lora.py): its torch version against the LoRA
term written out, the kernel against it in Triton's interpreter, and the tiny model's one-row static decoding
with it on and off."""

from __future__ import annotations

import pytest
import torch

from naturelm_core import one_row_lora
from naturelm_core.spectral import weigh_directions
from tests.test_decode_attention import TINY_MODEL_IN_CHILD, _interpret


def test_the_torch_version_adds_b_times_the_scaled_product_and_the_spectral_term():
    generator = torch.Generator().manual_seed(0)
    width, rank = 10, 6
    row = torch.randn(1, width + rank, generator=generator, dtype=torch.float64)
    lora_b = torch.randn(width, rank, generator=generator, dtype=torch.float64)
    scales = torch.rand(1, 1, rank, generator=generator, dtype=torch.float64)
    weights = torch.rand(1, 1, rank, generator=generator, dtype=torch.float64)
    into, out_of = (torch.linalg.qr(torch.randn(rank, rank, generator=generator, dtype=torch.float64)).Q for _ in "ab")
    down = row[:, width:]
    for spectral in (None, weights):
        expected = (
            row[:, :width]
            + (down * scales[0] + (0 if spectral is None else weigh_directions(down, spectral[0], into, out_of)))
            @ lora_b.T
        )
        got = row.clone()
        returned = one_row_lora.add_lora(
            got[:, :width], got[:, width:], scales, spectral, into, out_of, lora_b, None, False
        )
        assert returned.data_ptr() == got.data_ptr()  # in place, in the wider row
        assert torch.allclose(got[:, :width], expected)
        assert torch.equal(got[:, width:], down)


def test_the_kernel_in_tritons_interpreter_adds_what_the_torch_version_adds():
    """Three blocks of rank columns (q | k | v's block-diagonal B), one block (o), widths that fill no block of rows;
    plain and spectral rows; float32 and bf16. A kernel that dropped the spectral term, read another block's rank
    columns or added nothing fails (the expected sums are far from the starting row)."""
    out = _interpret(
        """
        import torch
        from naturelm_core import one_row_lora
        generator = torch.Generator().manual_seed(3)
        checked = 0
        for dtype, atol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            for width, rank, block in ((200, 24, 8), (77, 12, 12), (64, 6, 2)):
                row = torch.randn(1, width + rank, generator=generator).to(dtype)
                lora_b = torch.zeros(width, rank, dtype=dtype)
                edges = [0, width // 2, 3 * width // 4, width] if rank // block == 3 else [0, width]
                for index in range(rank // block):  # block-diagonal, as the step's fused q | k | v B
                    rows, columns = slice(edges[index], edges[index + 1]), slice(index * block, (index + 1) * block)
                    lora_b[rows, columns] = torch.randn(rows.stop - rows.start, block, generator=generator).to(dtype)
                scales = torch.rand(1, 1, rank, generator=generator) + 0.5
                maps = torch.linalg.qr(torch.randn(2, rank // block, block, block, generator=generator)).Q
                into, out_of = (torch.block_diag(*m.unbind()) for m in maps.unbind())
                for spectral in (None, torch.rand(1, 1, rank, generator=generator) * 2):
                    expected, got = row.clone(), row.clone()
                    for target, fused in ((expected, False), (got, True)):
                        out, down = target[:, :width], target[:, width:]
                        one_row_lora.add_lora(out, down, scales, spectral, into, out_of, lora_b, None, fused, block)
                    moved = (expected.float() - row.float()).abs().max().item()
                    error = (got.float() - expected.float()).abs().max().item()
                    scale = max(1.0, expected.float().abs().max().item())
                    assert moved > 10 * atol * scale, moved
                    assert error <= atol * scale, (dtype, width, rank, spectral is None, error)
                    checked += 1
        print(checked)
        """
    )
    assert out.split()[-1] == "12"


@pytest.mark.parametrize("rotation_fused", [True, False])
def test_one_row_static_decoding_gives_the_same_ids_with_the_kernel_on_and_off(rotation_fused):
    """The tiny model's Explore-shaped generations (one item, greedy), the one-row products on and the LoRA
    kernels on or off: the same ids at a plain alpha, a spectral recipe and a layer and module recipe, and the
    kernels ran: q | k | v's with the rotation and the cache write and o's alone, or (where a layer's rotation
    cannot be fused, e.g. LoRA ranks that differ between q, k and v) the adding kernel for both."""
    out = _interpret(
        """
        from naturelm_core import llama_step, one_row_lora

        if not ROTATION_FUSED:
            llama_step._Layer._rotation_fusable = lambda layer, head_dim: False

        launches = {"add": 0, "add_and_rotate": 0}
        original = one_row_lora._kernels
        class Counting:
            def __init__(self, kernel, name):
                self.kernel, self.name = kernel, name
            def __getitem__(self, grid):
                launches[self.name] += 1
                return self.kernel[grid]
        def counted():
            add, add_and_rotate = original()
            return Counting(add, "add"), Counting(add_and_rotate, "add_and_rotate")
        one_row_lora._kernels = counted

        def switch(step, fused):
            step.fused_one_row, step.fused_one_row_lora = True, fused

        same_one_row_ids_with_the_kernel_on_and_off(switch)
        print(launches["add"], launches["add_and_rotate"])
        """.replace("ROTATION_FUSED", str(rotation_fused)),
        prelude=TINY_MODEL_IN_CHILD,
    )
    add, add_and_rotate = map(int, out.split()[-2:])
    if rotation_fused:
        assert add > 0 and add == add_and_rotate  # o's LoRA term, and q | k | v's with the rotation: one each a layer
    else:
        assert add > 0 and add_and_rotate == 0


def test_the_rotating_kernel_in_tritons_interpreter_writes_what_the_lora_term_and_the_rotary_store_write():
    """The query and the whole KV cache against add_lora + RotaryStore's torch version: a small model's heads and
    Llama's head size, plain and spectral rows, float32 and bf16. A kernel that skipped the rotation, the LoRA term
    or the cache write, or wrote another column, fails (the reference writes column 5 of random caches)."""
    out = _interpret(
        """
        import torch
        from naturelm_core import one_row_lora
        checked = 0
        for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            for heads, kv_heads, head_dim, block in ((4, 2, 16, 8), (2, 1, 128, 4)):
                for spectral in (False, True):
                    assert one_row_lora.rotation_agrees(
                        heads, kv_heads, head_dim, block, spectral, dtype, torch.device("cpu"),
                        {"atol": tolerance, "rtol": tolerance},
                    ), (dtype, heads, spectral)
                    checked += 1
        print(checked)
        """
    )
    assert out.split()[-1] == "8"


def test_the_rotation_check_fails_a_kernel_that_skips_the_rotation(monkeypatch):
    """rotation_agrees can fail: with the rotary tables' sine zeroed and cosine one on the kernel's side only (the
    query and key left unrotated), it reports a mismatch."""
    out = _interpret(
        """
        import torch
        from naturelm_core import one_row_lora
        original = one_row_lora.add_lora_and_rotate
        def unrotated(projected, scales, weights, into, out_of, lora_b, block, store, keys, values, fused):
            if fused:
                store.cos, store.signed_sin = torch.ones_like(store.cos), torch.zeros_like(store.signed_sin)
            return original(projected, scales, weights, into, out_of, lora_b, block, store, keys, values, fused)
        one_row_lora.add_lora_and_rotate = unrotated
        tolerance = {"atol": 1e-4, "rtol": 1e-4}
        print(one_row_lora.rotation_agrees(4, 2, 16, 8, False, torch.float32, torch.device("cpu"), tolerance))
        """
    )
    assert out.split()[-1] == "False"


def test_the_start_up_check_passes_on_a_gpu():
    """On a CUDA GPU the kernel agrees with the torch version on Llama's widths (the check a step runs first)."""
    if not torch.cuda.is_available():
        assert not one_row_lora.fused_kernel_works(torch.device("cpu"), torch.float32)
        return
    assert one_row_lora.fused_kernel_works(torch.device("cuda"), torch.bfloat16)
