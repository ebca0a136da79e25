"""Merge recipes: a batch row merged layer by layer, projection by projection and singular direction by direction.

A float alpha scales every LoRA term alike. A recipe refines it (issue 18). For decoder layer l and
projection m, whose LoRA term is s * B A with s = lora_alpha / r and B A = U diag(sigma) V^T its exact
thin SVD, a row computes with the weights

    W + alpha * layers[l] * modules[m] * s * U diag(w * sigma) V^T

where w are the spectral weights: all 1 (B A itself) unless `rank` keeps the top k singular
directions or `spectrum` weighs them. The JSON form, every key optional:

    {"alpha": 0.8,                                      the global scale, default 1
     "layers": [one number per layer] | "linear:a0:a1", a multiplier per decoder layer (a ramp from
                                                        layer 0 to layer L-1), default all 1
     "modules": {"q_proj": 1, "k_proj": 0.5, ...},      a multiplier per projection, missing = 1
     "rank": k | "spectrum": [w1, w2, ...]}             keep the top k directions | weigh them
                                                        (directions after the list get 0)

Range rule: every direction's effective scale alpha * layers[l] * modules[m] * w_i lies in [0, 1],
or in [-1, 2] where extrapolation is allowed (without a spectrum, w_i = 1: the product of the three).

This module is the recipe as data: parsing, one canonical form, a short name, the range checks, and
its multipliers as plain numbers. It imports no torch; naturelm_core.alphas makes floats and recipes
one grammar, and naturelm_core.alpha turns the multipliers into the tensors a batch runs with.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from naturelm_core.alpha_values import (
    AlphaError,
    AlphaTypeError,
    alpha_range,
    format_number,
    range_hint,
    real_number,
)

MERGE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")  # the projections NatureLM's LoRA adapts, in layer order
RECIPE_KEYS = ("alpha", "layers", "modules", "rank", "spectrum")
RAMP_PREFIX = "linear:"
MAX_SHOWN = 24  # characters of a layer list or spectrum shown in a name; longer ones are named by a hash


class RecipeError(AlphaError):
    """A merge recipe that cannot be used; the message names the key, layer, module or weight at fault."""


@dataclass(frozen=True)
class LinearRamp:
    """layers = "linear:start:stop": layer l of L gets start + (stop - start) * l / (L - 1)."""

    start: float
    stop: float

    def values(self, num_layers: int) -> tuple[float, ...]:
        last = max(num_layers - 1, 1)
        values = [self.start + (self.stop - self.start) * layer / last for layer in range(num_layers)]
        if num_layers > 1:
            values[-1] = self.stop  # the ramp's end exactly, whatever the rounding
        return tuple(values)

    def __str__(self) -> str:
        return f"{RAMP_PREFIX}{format_number(self.start)}:{format_number(self.stop)}"

    @classmethod
    def parse(cls, text: str) -> LinearRamp:
        pieces = text.removeprefix(RAMP_PREFIX).split(":")
        if not text.startswith(RAMP_PREFIX) or len(pieces) != 2:
            raise RecipeError(f"layers {text!r} is neither a list of numbers nor a ramp 'linear:a0:a1'")
        try:
            start, stop = (float(piece) for piece in pieces)
        except ValueError:
            raise RecipeError(f"layers {text!r}: a ramp is 'linear:a0:a1' with two numbers") from None
        return cls(_finite(start, "layers ramp start"), _finite(stop, "layers ramp stop"))


@dataclass(frozen=True)
class MergeRecipe:
    """One row's merge (see the module docstring), in canonical form, so equal recipes compare and hash equal:
    modules at 1 and a ramp from 1 to 1 are dropped, a spectrum that is k ones becomes rank k, trailing
    zero weights are dropped. Exact values are kept (the numbers a row runs with); `name` rounds them.

    `layers` takes a list or a "linear:a0:a1" string, `modules` a mapping; both are normalised here.
    """

    alpha: float = 1.0
    layers: tuple[float, ...] | LinearRamp | None = None
    modules: tuple[tuple[str, float], ...] = field(default=())
    rank: int | None = None
    spectrum: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalise once, at construction
        set_field(self, "alpha", _finite(real_number(self.alpha, "alpha"), "alpha"))
        set_field(self, "layers", _layers(self.layers))
        set_field(self, "modules", _modules(self.modules))
        rank, spectrum = _spectral(self.rank, self.spectrum)
        set_field(self, "rank", rank)
        set_field(self, "spectrum", spectrum)

    # -- the JSON form -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MergeRecipe:
        """The recipe of a JSON object; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise AlphaTypeError(f"a merge recipe is a JSON object (a dict), got {type(data).__name__}: {data!r}")
        unknown = [key for key in data if key not in RECIPE_KEYS]
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise RecipeError(f"unknown recipe key {names}; the keys are {', '.join(RECIPE_KEYS)}")
        return cls(**data)

    def to_dict(self) -> dict[str, object]:
        """The canonical JSON object: alpha always, every other key only where it is not its default."""
        data: dict[str, object] = {"alpha": self.alpha}
        if isinstance(self.layers, LinearRamp):
            data["layers"] = str(self.layers)
        elif self.layers is not None:
            data["layers"] = list(self.layers)
        if self.modules:
            data["modules"] = dict(self.modules)
        if self.rank is not None:
            data["rank"] = self.rank
        if self.spectrum is not None:
            data["spectrum"] = list(self.spectrum)
        return data

    @property
    def name(self) -> str:
        """A short canonical name for tables, legends and result files: 'a0.8 L0.2~1 k0.5 o0 r8'.

        Parts: a (alpha, shown unless 1), L (a ramp start~stop, or the layer list run-length coded,
        '1x16,0x16'), the first letter of each module not at 1, r (rank) or s (the spectrum, coded like
        the layers). Numbers are rounded as grid keys are; a list longer than 24 characters is shown as
        '#' and a hash of its rounded values. A recipe with nothing but an alpha is named like the float.
        Spaces, digits, letters and '.,~#-' only: safe in file names on every system.
        """
        if self.is_plain:
            return format_number(self.alpha)
        parts = [] if self.alpha == 1.0 else [f"a{format_number(self.alpha)}"]
        if isinstance(self.layers, LinearRamp):
            parts.append(f"L{format_number(self.layers.start)}~{format_number(self.layers.stop)}")
        elif self.layers is not None:
            parts.append("L" + _shown(self.layers))
        parts.extend(f"{module[0]}{format_number(value)}" for module, value in self.modules)
        if self.rank is not None:
            parts.append(f"r{self.rank}")
        elif self.spectrum is not None:
            parts.append("s" + _shown(self.spectrum))
        return " ".join(parts)

    # -- what a row computes with ---------------------------------------------------------------------

    @property
    def is_plain(self) -> bool:
        """Nothing but an alpha: the recipe is that float, everywhere (same key, same numbers)."""
        return self.layers is None and not self.modules and self.rank is None and self.spectrum is None

    def layer_multipliers(self, num_layers: int) -> tuple[float, ...]:
        """layers[l] for each of the model's decoder layers."""
        self._check_layer_count(num_layers)
        if isinstance(self.layers, LinearRamp):
            return self.layers.values(num_layers)
        return (1.0,) * num_layers if self.layers is None else self.layers

    def module_multipliers(self) -> tuple[float, ...]:
        """modules[m] for each projection of MERGE_MODULES, in that order."""
        given = dict(self.modules)
        return tuple(given.get(module, 1.0) for module in MERGE_MODULES)

    def spectral_weights(self, rank: int) -> tuple[float, ...] | None:
        """w, one weight per singular direction of a rank-`rank` LoRA; None when every weight is 1 (the row
        then computes exactly as one without rank or spectrum)."""
        self._check_rank(rank)
        if self.rank is not None:
            weights = (1.0,) * self.rank + (0.0,) * (rank - self.rank)
        elif self.spectrum is not None:
            weights = self.spectrum + (0.0,) * (rank - len(self.spectrum))
        else:
            return None
        return None if all(weight == 1.0 for weight in weights) else weights

    # -- validation -----------------------------------------------------------------------------------

    def check(
        self, allow_extrapolation: bool = False, num_layers: int | None = None, rank: int | None = None
    ) -> MergeRecipe:
        """The recipe itself if every direction's scale obeys the range rule and, where the model's number of
        decoder layers and LoRA rank are given, its layers and rank fit them.

        Every row of a batch is checked, and a sweep's rows repeat a few recipes: a recipe that passed
        once for the same model and range passes again without the work (a layer ramp has 32 x 4
        products to check on Llama-3.1-8B)."""
        return _checked(self, allow_extrapolation, num_layers, rank)

    def _check(self, allow_extrapolation: bool, num_layers: int | None, rank: int | None) -> None:
        if num_layers is not None:
            self._check_layer_count(num_layers)
        if rank is not None:
            self._check_rank(rank)
        low, high = alpha_range(allow_extrapolation)
        for value, factors in self._scales(num_layers):
            if not low <= value <= high:
                parts = [f"{name} {format_number(factor)}" for name, factor in factors]
                raise RecipeError(
                    f"recipe '{self.name}': {' x '.join(parts)} gives {value:g}; every such product must lie in "
                    f"[{low:g}, {high:g}] {range_hint(allow_extrapolation)}"
                )

    def _scales(self, num_layers: int | None) -> Iterator[tuple[float, list[tuple[str, float]]]]:
        """Every extreme effective scale with the factors that make it. A product is extreme where each of
        its factors is, so a ramp needs only its ends (before the number of layers is known) and a
        spectrum only its extreme weights."""
        modules = list(zip(MERGE_MODULES, self.module_multipliers(), strict=True))
        weights = self._extreme_weights()
        for layer, layer_value in self._layer_values(num_layers).items():
            for module, module_value in modules:
                for index, weight in weights.items():
                    factors = [("alpha", self.alpha)]
                    if layer is not None:
                        factors.append((f"layers[{layer}]", layer_value))
                    factors.append((f"modules.{module}", module_value))
                    if index is not None:
                        factors.append((f"spectrum[{index}]", weight))
                    yield self.alpha * layer_value * module_value * weight, factors

    def _layer_values(self, num_layers: int | None) -> dict[int | str | None, float]:
        if self.layers is None:
            return {None: 1.0}
        if isinstance(self.layers, LinearRamp) and num_layers is None:
            return {0: self.layers.start, "L-1": self.layers.stop}
        return dict(enumerate(self.layers if num_layers is None else self.layer_multipliers(num_layers)))

    def _extreme_weights(self) -> dict[int | None, float]:
        if self.spectrum is None:
            return {None: 1.0}
        weights = dict(enumerate(self.spectrum))
        return {i: weights[i] for i in sorted({min(weights, key=weights.get), max(weights, key=weights.get)})}

    def _check_layer_count(self, num_layers: int) -> None:
        if isinstance(self.layers, tuple) and len(self.layers) != num_layers:
            raise RecipeError(
                f"recipe '{self.name}': layers lists {len(self.layers)} multipliers but the model has "
                f"{num_layers} decoder layers"
            )

    def _check_rank(self, rank: int) -> None:
        if self.rank is not None and not 1 <= self.rank <= rank:
            raise RecipeError(f"recipe '{self.name}': rank {self.rank} is outside 1..{rank} (the LoRA rank)")
        if self.spectrum is not None and len(self.spectrum) > rank:
            raise RecipeError(
                f"recipe '{self.name}': spectrum lists {len(self.spectrum)} weights but the LoRA rank is {rank}"
            )


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise RecipeError(f"{name} is {value}; it must be a finite number")
    return value


def _numbers(values: object, name: str) -> tuple[float, ...]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise AlphaTypeError(f"{name} must be a list of numbers, got {type(values).__name__}: {values!r}")
    if not values:
        raise RecipeError(f"{name} is an empty list")
    return tuple(_finite(real_number(v, f"{name}[{i}]"), f"{name}[{i}]") for i, v in enumerate(values))


def _layers(layers: object) -> tuple[float, ...] | LinearRamp | None:
    """None (all 1), a ramp (from 1 to 1: the default), or one multiplier per layer (kept even if all 1: its
    length is checked against the model's layers)."""
    if isinstance(layers, str):
        layers = LinearRamp.parse(layers)
    if layers is None or isinstance(layers, LinearRamp):
        return None if layers is None or (layers.start, layers.stop) == (1.0, 1.0) else layers
    return _numbers(layers, "layers")


def _modules(modules: object) -> tuple[tuple[str, float], ...]:
    """(module, multiplier) pairs in MERGE_MODULES order, multipliers of 1 dropped; from a mapping or such pairs."""
    if isinstance(modules, Mapping):
        pairs = list(modules.items())
    elif isinstance(modules, tuple | list) and all(isinstance(p, tuple | list) and len(p) == 2 for p in modules):
        pairs = list(modules)
    else:
        raise AlphaTypeError(f'modules must be a JSON object such as {{"k_proj": 0.5}}, got {modules!r}')
    given: dict[str, float] = {}
    for module, value in pairs:
        if module not in MERGE_MODULES:
            raise RecipeError(f"modules: unknown module {module!r}; the LoRA adapts {', '.join(MERGE_MODULES)}")
        given[module] = _finite(real_number(value, f"modules.{module}"), f"modules.{module}")
    return tuple((m, given[m]) for m in MERGE_MODULES if m in given and given[m] != 1.0)


def _spectral(rank: object, spectrum: object) -> tuple[int | None, tuple[float, ...] | None]:
    """(rank, spectrum) in canonical form: at most one of them; a spectrum of k ones is rank k."""
    if rank is not None and spectrum is not None:
        raise RecipeError("rank and spectrum exclude each other: give one of them")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise RecipeError(f"rank must be a whole number of singular directions, at least 1; got {rank!r}")
        return int(rank), None
    if spectrum is None:
        return None, None
    weights = list(_numbers(spectrum, "spectrum"))
    while weights and weights[-1] == 0.0:
        weights.pop()
    if not weights:
        raise RecipeError("spectrum weighs every direction 0; that is alpha 0 (write 'alpha': 0)")
    if all(w == 1.0 for w in weights):
        return len(weights), None
    return None, tuple(weights)


def _shown(values: tuple[float, ...]) -> str:
    """Rounded values run-length coded ('1x16,0.5x16'), or '#' and a hash of them when that is too long."""
    texts = [format_number(v) for v in values]
    runs = [(text, len(list(group))) for text, group in groupby(texts)]
    shown = ",".join(text if count == 1 else f"{text}x{count}" for text, count in runs)
    if len(shown) <= MAX_SHOWN:
        return shown
    return "#" + hashlib.sha1(",".join(texts).encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=4096)
def _checked(recipe: MergeRecipe, allow_extrapolation: bool, num_layers: int | None, rank: int | None) -> MergeRecipe:
    """MergeRecipe.check's work, once per recipe and model shape (a failure raises and is not kept)."""
    recipe._check(allow_extrapolation, num_layers, rank)
    return recipe
