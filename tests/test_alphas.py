"""The one alpha grammar: parsing, the range policy, grid keys (torch-free, used by every entry point)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from naturelm_core.alphas import (
    DEFAULT_ALPHA_GRID,
    DEFAULT_ALPHA_TEXT,
    MAX_GRID_POINTS,
    AlphaError,
    check_alpha,
    check_alpha_grid,
    format_alpha,
    format_grid,
    grid_key,
    parse_alpha_grid,
)


def test_lists_ranges_and_mixes_parse_in_order_without_repeats():
    assert parse_alpha_grid("0, 0.5, 1") == (0.0, 0.5, 1.0)
    assert parse_alpha_grid("0:1:0.1") == tuple(i / 10 for i in range(11))
    assert parse_alpha_grid("0, 0.3:0.5:0.1; 1, 0.4") == (0.0, 0.3, 0.4, 0.5, 1.0)
    assert 0.3 in parse_alpha_grid("0:1:0.1")  # not 0.30000000000000004


def test_the_default_grid_reads_back_from_its_text():
    assert parse_alpha_grid(DEFAULT_ALPHA_TEXT) == DEFAULT_ALPHA_GRID
    assert len(DEFAULT_ALPHA_GRID) == 11


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" , ;", "empty"),
        ("0, x", "'x' is not a number"),
        ("0, inf", "not a finite number"),
        ("1.5", r"must lie in \[0, 1\]"),
        ("-0.1", r"must lie in \[0, 1\]"),
        ("0:1", "start:stop:step"),
        ("1:0:0.1", "start <= stop"),
        ("0:1:0", "positive step"),
        ("0:1:0.001", "more than the 101"),
    ],
)
def test_bad_grids_name_what_is_wrong(text, message):
    with pytest.raises(AlphaError, match=message):
        parse_alpha_grid(text)


def test_extrapolation_is_opt_in_and_still_bounded():
    assert parse_alpha_grid("-1, 1.5, 2", allow_extrapolation=True) == (-1.0, 1.5, 2.0)
    with pytest.raises(AlphaError, match=r"\[-1, 2\]"):
        parse_alpha_grid("2.5", allow_extrapolation=True)


def test_a_stored_grid_refuses_repeats_a_typed_one_drops_them():
    with pytest.raises(AlphaError, match="twice"):
        check_alpha_grid([0.0, 0.3, 0.30000000000000004])
    assert check_alpha_grid([0.0, 0.3, 0.30000000000000004], drop_duplicates=True) == (0.0, 0.3)
    with pytest.raises(AlphaError, match="more than the 3"):
        check_alpha_grid([0.0, 0.1, 0.2, 0.3], limit=3)
    assert len(parse_alpha_grid("0:1:0.01")) == MAX_GRID_POINTS


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5]])
def test_only_real_numbers_are_alphas(value):
    with pytest.raises(TypeError, match="must be a real number"):
        check_alpha(value)


def test_keys_and_text_agree_on_one_identity():
    assert grid_key(0.1 + 0.2) == grid_key(0.3) == 0.3
    assert format_alpha(0.30000000000000004) == "0.3"
    assert format_alpha(1) == "1"
    assert parse_alpha_grid(format_grid([0.0, 0.25, 1.0])) == (0.0, 0.25, 1.0)
    with pytest.raises(AlphaError, match="must lie in"):
        check_alpha(math.nan)


def test_the_grammar_and_request_types_import_without_torch():
    code = (
        "import sys; import naturelm_core.alphas, naturelm_core.requests; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
