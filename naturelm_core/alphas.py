"""The one grammar for alphas and merge recipes, wherever one is typed, stored or compared.

Why one module: the same grid used to be parsed in five places with five limits, so "0:1:0.1"
worked in one tab and failed in the other, and 0.30000000000000004 and 0.3 were two grid points in
one place and one in another. Everything here is plain Python (no torch), so the evaluation side
imports it at module level.

A grid point is what one batch row is merged by: a float alpha, or a merge recipe
(naturelm_core.recipes: per-layer, per-projection and spectral weights), given as a `MergeRecipe` or
its JSON object. A recipe with nothing but an alpha IS that float: `check_grid_point({"alpha": 0.5})`
returns 0.5, with the float's key, text and numbers. `grid_key` is a point's identity: the rounded
float for a float (as it always was), the recipe's canonical name for a recipe.

The range policy (naturelm_core.alpha_values): [0, 1] interpolates between the base Llama (0) and
NatureLM-audio (1); [-1, 2] extrapolates beyond them and is only accepted where a caller opts in.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from naturelm_core.alpha_values import (
    ALPHA_RANGE,
    EXTRAPOLATION_RANGE,
    KEY_DECIMALS,
    AlphaError,
    AlphaTypeError,
    alpha_range,
    check_alpha,
    format_number,
    number_key,
)
from naturelm_core.recipes import MERGE_MODULES, MergeRecipe, RecipeError

GridPoint: TypeAlias = float | MergeRecipe  # a checked, canonical point: plain recipes are floats
PointLike: TypeAlias = float | MergeRecipe | Mapping[str, object]  # what callers may pass (a dict: the JSON form)

MAX_GRID_POINTS = 101
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
GRID_EXAMPLE = '0, 0.5, 1 or 0:1:0.1 or {"alpha": 0.8, "layers": "linear:0.2:1"}'
RECIPE_EXAMPLE = '{"alpha": 0.8, "layers": "linear:0.2:1", "modules": {"k_proj": 0.5}, "rank": 8}'

__all__ = [
    "ALPHA_RANGE",
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_ALPHA_TEXT",
    "EXTRAPOLATION_RANGE",
    "GRID_EXAMPLE",
    "KEY_DECIMALS",
    "MAX_GRID_POINTS",
    "MERGE_MODULES",
    "AlphaError",
    "AlphaTypeError",
    "GridPoint",
    "MergeRecipe",
    "PointLike",
    "RecipeError",
    "alpha_range",
    "check_alpha",
    "check_alpha_grid",
    "check_grid_point",
    "format_alpha",
    "format_grid",
    "grid_key",
    "parse_alpha_grid",
    "parse_recipe_text",
    "validate_alphas",
]


def check_grid_point(
    value: object,
    allow_extrapolation: bool = False,
    num_layers: int | None = None,
    rank: int | None = None,
    name: str = "alpha",
) -> GridPoint:
    """One grid point, checked and canonical: a float in range, or a recipe whose every scale is in range.

    `num_layers` and `rank` (the model's decoder layers and LoRA rank) also check a recipe's layer list
    and rank where known. A recipe with nothing but an alpha comes back as that float.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return check_alpha(value, allow_extrapolation, name)
    if not isinstance(value, MergeRecipe | Mapping):
        raise AlphaTypeError(
            f"{name} must be a real number or a merge recipe (a dict such as {RECIPE_EXAMPLE}), "
            f"got {type(value).__name__}: {value!r}"
        )
    try:
        recipe = _recipe(value).check(allow_extrapolation, num_layers, rank)
    except AlphaError as error:
        raise type(error)(f"{name}: {error}") from None
    return check_alpha(recipe.alpha, allow_extrapolation, name) if recipe.is_plain else recipe


def validate_alphas(
    alphas: PointLike | Sequence[PointLike],
    rows: int,
    allow_extrapolation: bool = False,
    num_layers: int | None = None,
    rank: int | None = None,
) -> list[GridPoint]:
    """One grid point per batch row (a single float or recipe is broadcast), each checked by `check_grid_point`."""
    single = isinstance(alphas, numbers.Real | MergeRecipe | Mapping)
    values = [alphas] * rows if single else list(alphas)
    if len(values) != rows:
        raise AlphaError(f"got {len(values)} alphas for {rows} rows; pass one alpha per row or a single one")
    return [
        check_grid_point(v, allow_extrapolation, num_layers, rank, name=f"alpha of row {i}")
        for i, v in enumerate(values)
    ]


def grid_key(point: PointLike) -> float | str:
    """The identity of a grid point in every table and file: 0.30000000000000004 and 0.3 are one point
    (a float), and a recipe is its canonical name (a str; a recipe of only an alpha is that float)."""
    if isinstance(point, MergeRecipe | Mapping):
        recipe = _recipe(point)
        return number_key(recipe.alpha) if recipe.is_plain else recipe.name
    return number_key(point)


def format_alpha(point: PointLike) -> str:
    """The short text of a grid point in tables, legends and file names ('0.3', '1', 'a0.8 L0.2~1 k0.5')."""
    key = grid_key(point)
    return key if isinstance(key, str) else format_number(key)


def format_grid(points: Iterable[PointLike]) -> str:
    """The text `parse_alpha_grid` reads back to the same grid: floats as numbers, recipes as JSON objects."""
    return ", ".join(
        json.dumps(_recipe(p).to_dict()) if isinstance(grid_key(p), str) else format_alpha(p) for p in points
    )


DEFAULT_ALPHA_TEXT = format_grid(DEFAULT_ALPHA_GRID)


def parse_alpha_grid(
    text: str,
    allow_extrapolation: bool = False,
    limit: int = MAX_GRID_POINTS,
    num_layers: int | None = None,
    rank: int | None = None,
) -> tuple[GridPoint, ...]:
    """A typed grid, in order: numbers ('0, 0.25, 1'), ranges ('0:1:0.1', both ends included), JSON
    recipes ('{"alpha": 0.8, "rank": 8}') and JSON lists of numbers and recipes, in any mix.

    Commas or semicolons separate parts; a point given twice (by its key) is kept once (first place).
    """
    values = _grid_values(text or "", limit)
    if not values:
        raise AlphaError(f"the alpha grid is empty; write e.g. {GRID_EXAMPLE}")
    return check_alpha_grid(values, allow_extrapolation, limit, drop_duplicates=True, num_layers=num_layers, rank=rank)


def check_alpha_grid(
    values: Sequence[object],
    allow_extrapolation: bool = False,
    limit: int = MAX_GRID_POINTS,
    drop_duplicates: bool = False,
    num_layers: int | None = None,
    rank: int | None = None,
) -> tuple[GridPoint, ...]:
    """A list of grid points (a spec's `alphas`): checked, at most `limit`, no point twice.

    Floats come back as their keys (0.3, not 0.30000000000000004), recipes canonical. A typed grid
    drops repeats silently (`drop_duplicates`); a stored spec that lists a point twice is refused,
    since its results would hold two rows per point.
    """
    if not values:
        raise AlphaError("the alpha grid is empty")
    points: dict[float | str, GridPoint] = {}
    for value in values:
        point = check_grid_point(value, allow_extrapolation, num_layers, rank)
        key = grid_key(point)
        if key in points and not drop_duplicates:
            raise AlphaError(f"the alpha grid lists {format_alpha(point)} twice: {list(values)}")
        points.setdefault(key, key if isinstance(point, float) else point)
    if len(points) > limit:
        raise AlphaError(f"{len(points)} alphas is more than the {limit} a grid allows")
    return tuple(points.values())


def parse_recipe_text(text: str) -> list[MergeRecipe]:
    """Recipes typed as JSON: one object, or a list of objects. Ranges are checked where they are used
    (`check_grid_point`, with the model's layers and rank)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{error.msg} at character {error.pos}"
        raise RecipeError(f"not valid JSON ({where}); write e.g. {RECIPE_EXAMPLE}") from None
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise RecipeError(f"write a JSON object such as {RECIPE_EXAMPLE}, or a list of them")
    recipes = []
    for index, item in enumerate(items):
        try:
            recipes.append(MergeRecipe.from_dict(item))
        except AlphaError as error:
            raise type(error)(f"recipe {index}: {error}" if isinstance(data, list) else str(error)) from None
    return recipes


def _recipe(point: MergeRecipe | Mapping[str, object]) -> MergeRecipe:
    return point if isinstance(point, MergeRecipe) else MergeRecipe.from_dict(point)


def _grid_values(text: str, limit: int) -> list[object]:
    """The raw points of a typed grid, left to right: JSON values where a part opens with '{' or '['."""
    decoder = json.JSONDecoder()
    values: list[object] = []
    position = 0
    while position < len(text):
        if text[position] in " \t\r\n,;":
            position += 1
        elif text[position] in "{[":
            try:
                value, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                raise AlphaError(f"{text[position:][:40]!r}... is not valid JSON ({error.msg})") from None
            values.extend(value if isinstance(value, list) else [value])
        else:
            end = min((i for i in (text.find(",", position), text.find(";", position)) if i >= 0), default=len(text))
            part = text[position:end].strip()
            values.extend(_range_values(part, limit) if ":" in part else [_number(part)])
            position = end
    return values


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AlphaError(f"alpha {text!r} is not a number; write e.g. {GRID_EXAMPLE}") from None
    if not math.isfinite(value):
        raise AlphaError(f"alpha {text!r} is not a finite number")
    return value


def _range_values(text: str, limit: int) -> list[float]:
    pieces = text.split(":")
    if len(pieces) != 3:
        raise AlphaError(f"{text!r}: a range is start:stop:step, e.g. 0:1:0.1")
    start, stop, step = (_number(piece.strip()) for piece in pieces)
    if step <= 0 or stop < start:
        raise AlphaError(f"{text!r}: a range needs start <= stop and a positive step")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > limit:
        raise AlphaError(f"{text!r} gives {count} alphas, more than the {limit} a grid allows")
    return [start + i * step for i in range(count)]
