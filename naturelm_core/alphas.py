"""The one grammar for alphas, wherever one is typed, stored or compared (Explore, sweeps, specs, scoring).

Why one module: the same grid used to be parsed in five places with five limits, so "0:1:0.1"
worked in one tab and failed in the other, and 0.30000000000000004 and 0.3 were two grid points in
one place and one in another. Everything here is plain Python (no torch), so the evaluation side
imports it at module level. A merge recipe (a dict in place of a float) will enter through the same
functions: a grid point is "what one batch row is interpolated by", and `grid_key` is its identity.

The range policy: [0, 1] interpolates between the base Llama (0) and NatureLM-audio (1); [-1, 2]
extrapolates beyond them and is only accepted where a caller opts in explicitly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

ALPHA_RANGE = (0.0, 1.0)
EXTRAPOLATION_RANGE = (-1.0, 2.0)
MAX_GRID_POINTS = 101
KEY_DECIMALS = 6
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
GRID_EXAMPLE = "0, 0.5, 1 or 0:1:0.1"


class AlphaError(ValueError):
    """An alpha or a grid of alphas that cannot be used; the message names the offending part."""


class AlphaTypeError(AlphaError, TypeError):
    """Not a number at all (a string, None, a bool): a caller's bug more often than a user's typo."""


def alpha_range(allow_extrapolation: bool = False) -> tuple[float, float]:
    return EXTRAPOLATION_RANGE if allow_extrapolation else ALPHA_RANGE


def check_alpha(value: object, allow_extrapolation: bool = False, name: str = "alpha") -> float:
    """One alpha as a float inside the allowed range; `name` says where it came from in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AlphaTypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    number = float(value)
    low, high = alpha_range(allow_extrapolation)
    if math.isnan(number) or not low <= number <= high:
        hint = "" if allow_extrapolation else " (values in [-1, 2] need allow_extrapolation=True)"
        raise AlphaError(
            f"{name} is {number:g}; it must lie in [{low:g}, {high:g}] "
            f"(0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio){hint}"
        )
    return number


def validate_alphas(alphas: float | Sequence[float], rows: int, allow_extrapolation: bool = False) -> list[float]:
    """One alpha per batch row (a single number is broadcast), each inside the allowed range."""
    values = [alphas] * rows if isinstance(alphas, numbers.Real) else list(alphas)
    if len(values) != rows:
        raise AlphaError(f"got {len(values)} alphas for {rows} rows; pass one alpha per row or a single float")
    return [check_alpha(v, allow_extrapolation, name=f"alpha of row {i}") for i, v in enumerate(values)]


def grid_key(alpha: float) -> float:
    """The identity of a grid point: 0.30000000000000004 and 0.3 are one point, in every table and file."""
    return round(float(alpha), KEY_DECIMALS)


def format_alpha(alpha: float) -> str:
    """The short text of an alpha in tables, legends and file names ('0.3', '1')."""
    return f"{grid_key(alpha):g}"


def format_grid(alphas: Iterable[float]) -> str:
    """The text `parse_alpha_grid` reads back to the same grid."""
    return ", ".join(format_alpha(a) for a in alphas)


DEFAULT_ALPHA_TEXT = format_grid(DEFAULT_ALPHA_GRID)


def parse_alpha_grid(text: str, allow_extrapolation: bool = False, limit: int = MAX_GRID_POINTS) -> tuple[float, ...]:
    """'0, 0.25, 1', '0:1:0.1' (start:stop:step, both ends included) or a mix -> the grid, in order.

    Commas or semicolons separate parts; a value given twice is kept once (first place).
    """
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if part:
            values.extend(_range_values(part, limit) if ":" in part else [_number(part)])
    if not values:
        raise AlphaError(f"the alpha grid is empty; write e.g. {GRID_EXAMPLE}")
    return check_alpha_grid(values, allow_extrapolation, limit, drop_duplicates=True)


def check_alpha_grid(
    values: Sequence[object],
    allow_extrapolation: bool = False,
    limit: int = MAX_GRID_POINTS,
    drop_duplicates: bool = False,
) -> tuple[float, ...]:
    """A list of grid points (a spec's `alphas`): in range, at most `limit`, no point twice.

    A typed grid drops repeats silently (`drop_duplicates`); a stored spec that lists a point twice
    is refused, since its results would hold two rows per point.
    """
    if not values:
        raise AlphaError("the alpha grid is empty")
    checked = [grid_key(check_alpha(v, allow_extrapolation)) for v in values]
    unique = tuple(dict.fromkeys(checked))
    if len(unique) != len(checked) and not drop_duplicates:
        raise AlphaError(f"the alpha grid lists a value twice: {list(values)}")
    if len(unique) > limit:
        raise AlphaError(f"{len(unique)} alphas is more than the {limit} a grid allows")
    return unique


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
