"""benchmarks/one_row_products.py's matrix-vector kernel in Triton's interpreter: what the decode step's one-row
products compute (with and without the RMSNorm folded in), so its timings on a GPU compare like with like."""

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
            for norm in (None, norm_weight):
                got = matrix_vector(x, weight, norm, **launch)
                torch.testing.assert_close(got, reference(x, weight, norm), atol=2e-4, rtol=1e-5)
                checked += 1
        try:
            matrix_vector(x, weight[:, :100])
        except ValueError as error:
            assert "do not tile" in str(error)
        else:
            raise AssertionError("a shape that does not tile was accepted")
        print("ok", checked)
        """
    )
    assert out.strip() == "ok 10"
