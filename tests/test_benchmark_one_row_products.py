"""benchmarks/one_row_products.py times the decode step's one-row kernel (naturelm_core.one_row) under several
launch shapes: under each, in Triton's interpreter, it computes what the step's torch path computes (with and
without the RMSNorm folded in), on widths that fill the blocks and widths that do not."""

from __future__ import annotations

from tests.test_decode_attention import _interpret


def test_the_kernel_computes_the_products_and_the_folded_norm_in_tritons_interpreter():
    out = _interpret(
        """
        import torch
        from benchmarks.one_row_products import LAUNCHES, matrix_vector, reference
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 2048, generator=generator)
        x = torch.randn(2048, generator=generator) * 3
        norm_weight = torch.rand(2048, generator=generator) + 0.5
        checked = 0
        for block_rows, block_columns, warps in LAUNCHES:
            launch = {"block_rows": block_rows, "block_columns": block_columns, "num_warps": warps}
            for rows, columns in ((64, 2048), (37, 1000)):
                for norm in (None, norm_weight[:columns]):
                    got = matrix_vector(x[:columns], weight[:rows, :columns], norm, **launch)
                    expected = reference(x[:columns], weight[:rows, :columns], norm)
                    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-5)
                    checked += 1
        print("ok", checked)
        """
    )
    assert out.strip() == "ok 20"
