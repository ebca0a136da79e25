"""Merge recipes as data: the JSON form, canonical names and keys, range checks, and one grammar with floats."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from naturelm_core.alphas import (
    AlphaError,
    AlphaTypeError,
    MergeRecipe,
    RecipeError,
    check_alpha_grid,
    check_grid_point,
    format_alpha,
    format_grid,
    grid_key,
    parse_alpha_grid,
    parse_recipe_text,
    validate_alphas,
)
from naturelm_core.recipes import LinearRamp

FULL = {"alpha": 0.8, "layers": "linear:0.2:1", "modules": {"k_proj": 0.5, "o_proj": 0}, "rank": 8}


# --- the JSON form and the canonical form --------------------------------------------------------------


def test_the_json_form_round_trips_through_the_dataclass():
    recipe = MergeRecipe.from_dict(FULL)
    assert recipe == MergeRecipe(alpha=0.8, layers=LinearRamp(0.2, 1.0), modules={"o_proj": 0, "k_proj": 0.5}, rank=8)
    assert recipe.to_dict() == {**FULL, "modules": {"k_proj": 0.5, "o_proj": 0.0}}
    assert MergeRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert hash(recipe) == hash(MergeRecipe.from_dict(FULL))


def test_defaults_are_dropped_so_equal_recipes_are_one():
    assert MergeRecipe(layers="linear:1:1", modules={"q_proj": 1}) == MergeRecipe()
    assert MergeRecipe(layers=[1, 1]).name == "L1x2"  # a list keeps its length, to be checked against the model
    assert MergeRecipe(spectrum=[1, 1, 0, 0]) == MergeRecipe(rank=2)  # k ones and zeros after: rank k
    assert MergeRecipe(spectrum=[1, 0.5, 0]).spectrum == (1.0, 0.5)  # missing weights are 0 anyway
    assert MergeRecipe(alpha=0.5).is_plain and not MergeRecipe(alpha=0.5, rank=3).is_plain


def test_names_are_short_and_canonical():
    assert MergeRecipe.from_dict(FULL).name == "a0.8 L0.2~1 k0.5 o0 r8"
    assert MergeRecipe(layers=[1] * 16 + [0] * 16).name == "L1x16,0x16"
    assert MergeRecipe(alpha=0.5, spectrum=[1, 0.5, 0.25]).name == "a0.5 s1,0.5,0.25"
    assert MergeRecipe(modules={"v_proj": 0.30000000000000004}).name == "v0.3"
    long = MergeRecipe(layers=[i / 31 for i in range(32)]).name
    assert long.startswith("L#") and len(long) == 10
    assert long != MergeRecipe(layers=[1 - i / 31 for i in range(32)]).name


def test_a_ramp_runs_from_the_first_to_the_last_layer():
    assert MergeRecipe(layers="linear:0:1").layer_multipliers(5) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert MergeRecipe(layers="linear:0.2:0.3").layer_multipliers(32)[-1] == 0.3
    assert MergeRecipe(layers="linear:0.5:1").layer_multipliers(1) == (0.5,)


def test_multipliers_and_spectral_weights():
    recipe = MergeRecipe.from_dict(FULL)
    assert recipe.module_multipliers() == (1.0, 0.5, 1.0, 0.0)
    assert recipe.spectral_weights(10) == (1.0,) * 8 + (0.0, 0.0)
    assert MergeRecipe(spectrum=[0.5, 0.25]).spectral_weights(4) == (0.5, 0.25, 0.0, 0.0)
    assert MergeRecipe(rank=4).spectral_weights(4) is None  # every direction kept: the plain computation
    assert MergeRecipe(layers=[0, 1]).spectral_weights(4) is None


# --- one grammar: floats and recipes -----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.30000000000000004, 1, 1.5])
def test_a_recipe_of_only_an_alpha_is_that_float(alpha):
    for recipe in ({"alpha": alpha}, MergeRecipe(alpha=alpha)):
        point = check_grid_point(recipe, allow_extrapolation=True)
        assert point == alpha and type(point) is float  # exact: the same numbers as the float
        assert grid_key(recipe) == grid_key(alpha)
        assert format_alpha(recipe) == format_alpha(alpha)
    assert check_grid_point({}) == 1.0


def test_grid_keys_stay_floats_for_floats_and_are_names_for_recipes():
    assert grid_key(0.1 + 0.2) == 0.3 and isinstance(grid_key(0.3), float)
    assert grid_key(FULL) == grid_key(MergeRecipe.from_dict(FULL)) == "a0.8 L0.2~1 k0.5 o0 r8"
    assert format_alpha(FULL) == "a0.8 L0.2~1 k0.5 o0 r8"
    assert grid_key({"alpha": 0.5, "rank": 2}) != grid_key({"alpha": 0.5, "rank": 3})


def test_validate_alphas_broadcasts_a_single_recipe_and_mixes_kinds():
    recipe = MergeRecipe(alpha=0.5, layers=[0, 1])
    assert validate_alphas({"alpha": 0.5, "layers": [0, 1]}, 2) == [recipe, recipe]
    assert validate_alphas([0.5, {"alpha": 0.25}, recipe], 3, num_layers=2, rank=4) == [0.5, 0.25, recipe]


def test_typed_grids_mix_numbers_ranges_and_json():
    grid = parse_alpha_grid('0, 0.5:1:0.25; {"alpha": 0.8, "rank": 2}, [{"alpha": 0.3}, 0.3, {"layers": [0, 1]}]')
    assert grid == (0.0, 0.5, 0.75, 1.0, MergeRecipe(alpha=0.8, rank=2), 0.3, MergeRecipe(layers=[0, 1]))
    assert parse_alpha_grid(format_grid(grid)) == grid
    assert parse_alpha_grid("0, 0.3:0.5:0.1; 1, 0.4") == (0.0, 0.3, 0.4, 0.5, 1.0)  # the old grammar, unchanged


def test_a_stored_grid_refuses_a_recipe_twice():
    with pytest.raises(AlphaError, match="r2 twice"):
        check_alpha_grid([{"rank": 2}, MergeRecipe(spectrum=[1, 1])])
    assert check_alpha_grid([{"rank": 2}, {"spectrum": [1, 1]}, 0.5], drop_duplicates=True) == (
        MergeRecipe(rank=2),
        0.5,
    )


def test_recipe_text_is_a_json_object_or_a_list_of_them():
    assert parse_recipe_text('{"alpha": 0.5, "rank": 3}') == [MergeRecipe(alpha=0.5, rank=3)]
    assert parse_recipe_text('[{"alpha": 0.5}, {"layers": "linear:0:1"}]') == [
        MergeRecipe(alpha=0.5),
        MergeRecipe(layers="linear:0:1"),
    ]
    with pytest.raises(RecipeError, match="not valid JSON"):
        parse_recipe_text('{"alpha": 0.5')
    with pytest.raises(RecipeError, match="JSON object"):
        parse_recipe_text("[0.5]")
    with pytest.raises(RecipeError, match="recipe 1: unknown recipe key 'rnk'"):
        parse_recipe_text('[{"alpha": 1}, {"rnk": 1}]')


# --- errors name the offending part -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"alpha": 0.8, "layer": [1, 1]}, "unknown recipe key 'layer'"),
        ({"modules": {"gate_proj": 0.5}}, "unknown module 'gate_proj'"),
        ({"layers": [1, 0.5, 1]}, "layers lists 3 multipliers but the model has 2 decoder layers"),
        ({"layers": "lin:0:1"}, "'linear:a0:a1'"),
        ({"layers": [0.5, "x"]}, r"layers\[1\] must be a real number"),
        ({"rank": 5}, r"rank 5 is outside 1\.\.4"),
        ({"rank": 0}, "rank must be a whole number"),
        ({"rank": 2.5}, "rank must be a whole number"),
        ({"rank": 2, "spectrum": [1, 0.5]}, "exclude each other"),
        ({"spectrum": [1, 0.5, 0.5, 0.5, 0.5]}, "spectrum lists 5 weights but the LoRA rank is 4"),
        ({"spectrum": [0, 0]}, "every direction 0"),
        ({"alpha": float("nan")}, "finite"),
        ({"alpha": 0.8, "modules": {"k_proj": 2}}, r"alpha 0\.8 x modules\.k_proj 2 gives 1\.6"),
        ({"layers": [0.5, 1.5]}, r"layers\[1\] 1\.5 x modules\.q_proj 1 gives 1\.5"),
        ({"alpha": 0.5, "spectrum": [3, 1]}, r"spectrum\[0\] 3 gives 1\.5"),
        ({"alpha": -0.5, "rank": 1}, r"gives -0\.5.*allow_extrapolation"),
    ],
)
def test_errors_name_the_offending_part(recipe, message):
    with pytest.raises(AlphaError, match=message) as error:
        check_grid_point(recipe, num_layers=2, rank=4, name="alpha of row 3")
    assert str(error.value).startswith("alpha of row 3: ")


def test_a_ramp_is_range_checked_at_its_ends_before_the_layers_are_known():
    with pytest.raises(RecipeError, match=r"layers\[L-1\] 2"):
        check_grid_point({"layers": "linear:0:2"})
    assert check_grid_point({"layers": "linear:0:2"}, allow_extrapolation=True, num_layers=3) == MergeRecipe(
        layers=LinearRamp(0.0, 2.0)
    )
    with pytest.raises(RecipeError, match=r"\[-1, 2\]"):
        check_grid_point({"alpha": 2, "layers": "linear:0:1.5"}, allow_extrapolation=True)


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5]])
def test_anything_else_is_neither_alpha_nor_recipe(value):
    with pytest.raises(AlphaTypeError, match="must be a real number or a merge recipe"):
        check_grid_point(value)


def test_the_recipe_grammar_imports_without_torch():
    code = "import sys; import naturelm_core.recipes, naturelm_core.alphas; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_recipe_checked_once_for_a_model_shape_is_not_checked_again_and_failures_always_raise(monkeypatch):
    """Every row of a batch is checked: a sweep's repeated recipes must not redo the 32 x 4 products each time."""
    from naturelm_core.recipes import MergeRecipe, RecipeError

    calls: list[int] = []
    original = MergeRecipe._scales
    monkeypatch.setattr(MergeRecipe, "_scales", lambda self, n: calls.append(1) or original(self, n))
    ramp = MergeRecipe.from_dict({"layers": "linear:0.25:1", "modules": {"k_proj": 0.5}})
    for _ in range(3):
        assert ramp.check(num_layers=17, rank=8) is ramp
    assert len(calls) == 1
    too_strong = MergeRecipe.from_dict({"alpha": 1.0, "layers": "linear:0.25:3"})
    for _ in range(2):
        with pytest.raises(RecipeError, match=r"alpha 1 x layers\[5\] 1.10938 x modules.q_proj 1 gives 1.10938"):
            too_strong.check(num_layers=17)
