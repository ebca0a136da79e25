"""The one-row products (naturelm_core/one_row.py): each form against its torch version in Triton's interpreter,
and the tiny model's one-row static decoding with the kernels on and off."""

from __future__ import annotations

import torch

from naturelm_core import one_row
from tests.test_decode_attention import TINY_MODEL_IN_CHILD, _interpret


def test_the_torch_forms_compute_what_the_step_computed():
    """The references: the step's RMSNorm, product, residual sum and SwiGLU, as written before these kernels."""
    generator = torch.Generator().manual_seed(0)
    x, residual = torch.randn(1, 24, generator=generator), torch.randn(1, 10, generator=generator)
    weight, second, up = (torch.randn(rows, 24, generator=generator) for rows in (10, 3, 10))
    gain = torch.rand(24, generator=generator) + 0.5
    normed = torch.nn.functional.rms_norm(x, (24,), gain, 1e-5)
    stacked = one_row.linear(x, weight, False, second=second, residual=residual, norm=(gain, 1e-5))
    assert torch.allclose(stacked[:, :10], residual + normed @ weight.T, atol=1e-6)
    assert torch.allclose(stacked[:, 10:], normed @ second.T, atol=1e-6)
    hidden = one_row.gated(x, weight, up, False, norm=(gain, 1e-5))
    assert torch.allclose(hidden, torch.nn.functional.silu(normed @ weight.T) * (normed @ up.T), atol=1e-6)


def test_the_kernel_in_tritons_interpreter_computes_every_form():
    """Widths that fill no block (1000 columns, 77 rows), and Llama's block-filling ones scaled down; float32
    and bf16. A kernel that dropped the norm's scale, the second matrix's rows, the residual or the gate fails."""
    out = _interpret(
        """
        import torch
        from naturelm_core import one_row
        checked = 0
        generator = torch.Generator().manual_seed(1)
        for dtype, atol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            for columns, rows, extra in ((1000, 77, 5), (2048, 8, 4), (64, 3, 16)):
                def random(*shape, scale=1.0):
                    return (torch.randn(*shape, generator=generator) * scale).to(dtype)
                x, residual = random(1, columns, scale=3.0), random(1, rows)
                weight, up = random(rows, columns, scale=0.05), random(rows, columns, scale=0.05)
                second = random(extra, columns, scale=0.05)
                norm = ((torch.rand(columns, generator=generator) + 0.5).to(dtype), 1e-5)
                cases = (
                    (one_row.linear, (x, weight), {}),
                    (one_row.linear, (x, weight), {"norm": norm}),
                    (one_row.linear, (x, weight), {"second": second, "residual": residual}),
                    (one_row.linear, (x, weight), {"second": second, "residual": residual, "norm": norm}),
                    (one_row.gated, (x, weight, up), {"norm": norm}),
                    (one_row.gated, (x, weight, up), {}),
                )
                for form, arguments, options in cases:
                    got = form(*arguments, fused=True, **options)
                    expected = form(*arguments, fused=False, **options)
                    assert got.shape == expected.shape and got.dtype == dtype, (got.shape, expected.shape)
                    error = (got.float() - expected.float()).abs().max().item()
                    assert error <= atol * max(1.0, expected.float().abs().max().item()), (form, options.keys(), error)
                    checked += 1
        print(checked)
        """
    )
    assert out.split()[-1] == "36"


def test_one_row_static_decoding_gives_the_same_ids_with_the_kernels_on_and_off():
    """The tiny model's Explore-shaped generations (one item, greedy: one row a step), the step's one-row
    products on and off: the same ids, and the kernels ran; at a plain alpha, a spectral recipe (its LoRA
    A product for o comes out of the stacked o kernel) and a layer and module recipe."""
    out = _interpret(
        """
        from naturelm_core import one_row

        launches = []
        original = one_row._launch
        def counted(*arguments, **options):
            launches.append(1)
            return original(*arguments, **options)
        one_row._launch = counted
        same_one_row_ids_with_the_kernel_on_and_off(lambda step, fused: setattr(step, "fused_one_row", fused))
        print(len(launches))
        """,
        prelude=TINY_MODEL_IN_CHILD,
    )
    assert int(out.split()[-1]) > 0


def test_the_start_up_check_passes_on_a_gpu():
    """On a CUDA GPU the kernels agree with torch on Llama's widths (the check a step runs before using them)."""
    if not torch.cuda.is_available():
        assert not one_row.fused_kernel_works(torch.device("cpu"), torch.float32)
        return
    assert one_row.fused_kernel_works(torch.device("cuda"), torch.bfloat16)
