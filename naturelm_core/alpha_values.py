"""One merge weight as a number: the range policy, its key and its text, and the errors every check raises.

The floor of the alpha grammar: naturelm_core.recipes (a recipe's weights obey the same range) and
naturelm_core.alphas (grids of floats and recipes) both build on it, so it imports neither. Plain
Python, no torch.

The range policy: [0, 1] interpolates between the base Llama (0) and NatureLM-audio (1); [-1, 2]
extrapolates beyond them and is only accepted where a caller opts in explicitly.
"""

from __future__ import annotations

import math
import numbers

ALPHA_RANGE = (0.0, 1.0)
EXTRAPOLATION_RANGE = (-1.0, 2.0)
KEY_DECIMALS = 6


class AlphaError(ValueError):
    """An alpha, a recipe or a grid of them that cannot be used; the message names the offending part."""


class AlphaTypeError(AlphaError, TypeError):
    """Not a number at all (a string, None, a bool): a caller's bug more often than a user's typo."""


def alpha_range(allow_extrapolation: bool = False) -> tuple[float, float]:
    return EXTRAPOLATION_RANGE if allow_extrapolation else ALPHA_RANGE


def range_hint(allow_extrapolation: bool) -> str:
    """What an out-of-range message adds: the meaning of the ends, and how to go beyond them."""
    hint = "" if allow_extrapolation else " (values in [-1, 2] need allow_extrapolation=True)"
    return f"(0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio){hint}"


def check_alpha(value: object, allow_extrapolation: bool = False, name: str = "alpha") -> float:
    """One alpha as a float inside the allowed range; `name` says where it came from in the message."""
    number = real_number(value, name)
    low, high = alpha_range(allow_extrapolation)
    if math.isnan(number) or not low <= number <= high:
        raise AlphaError(f"{name} is {number:g}; it must lie in [{low:g}, {high:g}] {range_hint(allow_extrapolation)}")
    return number


def real_number(value: object, name: str) -> float:
    """`value` as a float if it is a real number (a bool is not one); the range is the caller's business."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AlphaTypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


def number_key(value: float) -> float:
    """The identity of a number in tables and files: 0.30000000000000004 and 0.3 are one (and -0.0 is 0.0)."""
    return round(float(value), KEY_DECIMALS) + 0.0


def format_number(value: float) -> str:
    """The short text of a number ('0.3', '1', '-0.5'), the same for every number with one key."""
    return f"{number_key(value):g}"
