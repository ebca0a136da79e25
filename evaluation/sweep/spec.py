"""What a sweep is: the SweepSpec schema, its validation, its JSON form and the sweep id derived from it.

A spec is saved as runs/<sweep-id>/spec.json and read back to resume, so its JSON form is a stored
format: a field added later is written only when set (older specs keep their id), and values are
stored as given (an alpha of 0 stays 0, not 0.0), since the id is a hash of that JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from evaluation.datasets import task_of
from evaluation.icl import ExtendedPrompt, InContextError, Species, parse_species, uses_extended_language
from evaluation.prompts import PAPER_PROMPTS, Prompt, PromptTemplateError
from evaluation.reference import LabelMapping, load_label_mapping
from evaluation.scoring import ScoringMode
from naturelm_core.alphas import AlphaError, GridPoint, MergeRecipe, check_alpha_grid, check_grid_point, format_alpha
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.requests import GenerationSettings

# The shortest model window: the shortest clip naturelm_core.audio accepts (its MIN_DURATION_S).
MIN_WINDOW_S = 0.5


class SweepSpecError(ValueError):
    """A sweep spec that cannot be run as written: missing fields, bad values, unknown preset prompts."""


class DataSource(StrEnum):
    BEANS_ZERO = "beans-zero"  # the Hub, through the local subset cache
    PARQUET = "parquet"  # a local parquet file or folder of BEANS-Zero shards
    RECORDINGS = "recordings"  # a folder of recordings + labels CSV


class AnswerMode(StrEnum):
    """How an item is answered: by generating text (the paper's way), or by scoring every label of the subset's
    closed set (Engine.submit_labels) and answering the most likely one, which keeps the whole distribution."""

    GENERATE = "generate"
    LIKELIHOOD = "likelihood"


# Fields whose values decide the answers; the sweep id hashes these, so scoring options can change freely.
PATH_FIELDS = ("path", "labels_csv", "mapping_file")
ANSWER_FIELDS = (
    "source",
    "path",
    "labels_csv",
    "subsets",
    "limit",
    "top_k_classes",
    "prompts",
    "alphas",
    "recipes",
    "seed",
    "num_beams",
    "max_new_tokens",
    "window_s",
    "species",
    "answer_mode",
)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs; saved as runs/<sweep-id>/spec.json.

    `limit` is per subset: that many samples chosen by a seeded hash of their ids (a reproducible
    random subset, not the first rows, which are often grouped by class). `top_k_classes` keeps the
    rows of the k most frequent labels first. `window_s` overrides each subset's model window.
    `species` keeps the rows of these labels only and lists them in this order (the fork's
    `species:`); `max_context_tokens` caps the positions one row may take, its recordings and answer
    included (default: the LLM's max_position_embeddings). `alphas` are plain float grid points and
    `recipes` merge recipes (naturelm_core.recipes), each one more grid point per prompt; a spec needs
    at least one of either. Both are checked by naturelm_core.alphas' rules and compared through its
    `grid_key`; `grid` is them all, alphas first.
    """

    name: str
    subsets: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    alphas: tuple[float, ...]
    source: DataSource = DataSource.BEANS_ZERO
    path: str | None = None
    labels_csv: str | None = None
    limit: int | None = None
    top_k_classes: int | None = None
    seed: int = 0
    num_beams: int = 2
    max_new_tokens: int = 100
    window_s: float | None = None
    scoring_mode: ScoringMode = ScoringMode.PAPER
    mapping_file: str | None = None
    species: tuple[Species, ...] = ()
    max_context_tokens: int | None = None
    recipes: tuple[MergeRecipe, ...] = ()
    answer_mode: AnswerMode = AnswerMode.GENERATE
    # The folder a spec was read back from: its id stays that folder's, however the paths were written.
    saved_as: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in PATH_FIELDS:  # absolute, so that spec.json resolves the same from the app, the CLI, any folder
            value = getattr(self, key)
            if value and not Path(value).expanduser().is_absolute():
                object.__setattr__(self, key, str(Path(value).expanduser().resolve()))
        if not isinstance(self.name, str) or not self.name.strip():
            raise SweepSpecError("a sweep needs a non-empty name")
        if not self.subsets or not all(isinstance(s, str) and s.strip() for s in self.subsets):
            raise SweepSpecError("a sweep needs at least one subset name")
        if len(set(self.subsets)) != len(self.subsets):
            raise SweepSpecError(f"subsets are listed twice: {list(self.subsets)}")
        if not self.prompts:
            raise SweepSpecError("a sweep needs at least one prompt")
        names = [p.name for p in self.prompts]
        if len(set(names)) != len(names):
            raise SweepSpecError(f"prompt names must be unique (results are keyed by them): {names}")
        object.__setattr__(self, "recipes", _recipes(self.recipes))
        if any(not isinstance(alpha, int | float) or isinstance(alpha, bool) for alpha in self.alphas):
            raise SweepSpecError(f"alphas are numbers; list merge recipes under 'recipes': {list(self.alphas)}")
        if not self.alphas and not self.recipes:
            raise SweepSpecError("the grid is empty: a sweep needs at least one alpha or merge recipe")
        try:
            check_alpha_grid(self.grid)
        except AlphaError as error:
            raise SweepSpecError(str(error)) from None
        if self.source is not DataSource.BEANS_ZERO and not self.path:
            raise SweepSpecError(f"source {self.source.value!r} needs a 'path'")
        if self.source is DataSource.RECORDINGS and len(self.subsets) != 1:
            raise SweepSpecError("a folder of recordings is one data set: give exactly one subset name for it")
        if self.species and self.top_k_classes is not None:
            raise SweepSpecError("give either species or top_k_classes (top_k_species), not both")
        for key in ("limit", "top_k_classes", "max_context_tokens"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SweepSpecError(f"{key} must be a positive integer or null, got {value!r}")
        for key in ("seed", "num_beams", "max_new_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SweepSpecError(f"{key} must be an integer, got {value!r}")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise SweepSpecError("num_beams and max_new_tokens must be at least 1")
        self._check_answer_mode()
        if self.window_s is not None and not MIN_WINDOW_S <= self.window_s <= WINDOW_SECONDS:
            raise SweepSpecError(f"window_s must lie in [{MIN_WINDOW_S:g}, {WINDOW_SECONDS:g}] s, got {self.window_s}")

    def _check_answer_mode(self) -> None:
        """Likelihood answers need a closed label set: BEANS-Zero classification subsets, or a labels CSV."""
        try:
            object.__setattr__(self, "answer_mode", AnswerMode(self.answer_mode))
        except ValueError:
            modes = [mode.value for mode in AnswerMode]
            raise SweepSpecError(f"answer_mode must be one of {modes}, got {self.answer_mode!r}") from None
        if self.answer_mode is AnswerMode.LIKELIHOOD and self.source is not DataSource.RECORDINGS:
            open_sets = [name for name in self.subsets if task_of(name) != "classification"]
            if open_sets:
                raise SweepSpecError(
                    f"answer_mode 'likelihood' needs subsets with a closed label set (classification); "
                    f"{open_sets} are not"
                )

    # -- identity --------------------------------------------------------------------------

    @property
    def sweep_id(self) -> str:
        """`<slug of the name>-<hash of the answer-deciding fields>`: the same spec always resumes the same sweep."""
        if self.saved_as is not None:
            return self.saved_as
        answer_fields = {key: value for key, value in self.to_dict().items() if key in ANSWER_FIELDS}
        digest = hashlib.sha256(json.dumps(answer_fields, sort_keys=True).encode()).hexdigest()[:10]
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:40].strip("-") or "sweep"
        return f"{slug}-{digest}"

    @property
    def grid(self) -> tuple[GridPoint, ...]:
        """Every grid point a prompt is asked at: the alphas as given (as results have always stored them),
        then the recipes."""
        return (*map(float, self.alphas), *self.recipes)

    @property
    def items_per_sample(self) -> int:
        return len(self.prompts) * len(self.grid)

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """species, max_context_tokens, recipes and answer_mode came after sweeps existed: written only when set
        (answer_mode: when not "generate"), so older ids stay."""
        return {
            "name": self.name,
            "source": self.source.value,
            "path": self.path,
            "labels_csv": self.labels_csv,
            "subsets": list(self.subsets),
            "limit": self.limit,
            "top_k_classes": self.top_k_classes,
            "prompts": [_prompt_dict(p) for p in self.prompts],
            "alphas": list(self.alphas),
            "seed": self.seed,
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "window_s": self.window_s,
            "scoring_mode": self.scoring_mode.value,
            "mapping_file": self.mapping_file,
            **({"species": [s.to_dict() for s in self.species]} if self.species else {}),
            **({"max_context_tokens": self.max_context_tokens} if self.max_context_tokens is not None else {}),
            **({"recipes": [recipe.to_dict() for recipe in self.recipes]} if self.recipes else {}),
            **({"answer_mode": self.answer_mode.value} if self.answer_mode is not AnswerMode.GENERATE else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> SweepSpec:
        """Build a spec from JSON-like data; prompts may be preset names ("common") or {name, template}.

        Relative paths are resolved against `base_dir` (the spec file's folder) or the working folder,
        and stored absolute, so a saved spec resumes from anywhere.
        """
        if not isinstance(data, dict):
            raise SweepSpecError(f"a sweep spec is a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__} - {"saved_as"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepSpecError(f"unknown spec field(s) {unknown}; known fields: {sorted(known)}")
        missing = [key for key in ("name", "subsets", "prompts") if key not in data]
        if "alphas" not in data and "recipes" not in data:
            missing.append("alphas or recipes")
        if missing:
            raise SweepSpecError(f"the spec lacks {missing}")
        values = dict(data)
        try:
            values["source"] = DataSource(values.get("source", DataSource.BEANS_ZERO))
            values["scoring_mode"] = ScoringMode(values.get("scoring_mode", ScoringMode.PAPER))
        except ValueError as error:
            raise SweepSpecError(str(error)) from None
        subsets = values["subsets"]
        values["subsets"] = (subsets,) if isinstance(subsets, str) else tuple(subsets)
        values["prompts"] = tuple(_parse_prompt(p) for p in _as_list(values["prompts"], "prompts"))
        values["alphas"] = tuple(_as_list(values.get("alphas", []), "alphas"))
        values["recipes"] = tuple(_as_list(values.get("recipes", []), "recipes"))
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        for key in PATH_FIELDS:
            if values.get(key):
                values[key] = str((base / Path(values[key]).expanduser()).resolve())
        if values.get("window_s") is not None:
            values["window_s"] = _as_number(values["window_s"], "window_s")
        if "species" in values:
            try:
                values["species"] = parse_species(values["species"])
            except InContextError as error:
                raise SweepSpecError(str(error)) from None
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> SweepSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepSpecError(f"spec file {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise SweepSpecError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") from None
        return cls.from_dict(data, base_dir=path.parent)

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    # -- what the runner and the scorer need --------------------------------------------------

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)

    def label_mapping(self) -> LabelMapping | None:
        return load_label_mapping(self.mapping_file) if self.mapping_file else None


def _recipes(values: tuple[Any, ...]) -> tuple[MergeRecipe, ...]:
    """Recipes in canonical form; a recipe of nothing but an alpha is refused, as it belongs under alphas
    (where results of old sweeps keep it)."""
    recipes = []
    for index, value in enumerate(values):
        try:
            point = check_grid_point(value, name=f"recipe {index}")
        except AlphaError as error:
            raise SweepSpecError(str(error)) from None
        if not isinstance(point, MergeRecipe):
            raise SweepSpecError(f"recipe {index} is only alpha {format_alpha(point)}: list it under 'alphas'")
        recipes.append(point)
    return tuple(recipes)


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise SweepSpecError(f"{key} must be a list, got {value!r}")
    return list(value)


def _as_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepSpecError(f"{key} must be a number, got {value!r}")
    return float(value)


def _parse_prompt(value: Any) -> Prompt:
    try:
        if isinstance(value, str):
            if value not in PAPER_PROMPTS:
                raise SweepSpecError(f"unknown preset prompt {value!r}; presets: {sorted(PAPER_PROMPTS)}")
            return PAPER_PROMPTS[value]
        if isinstance(value, dict) and set(value) == {"name", "template", "examples_per_class"}:
            return ExtendedPrompt(str(value["name"]), str(value["template"]), value["examples_per_class"])
        if isinstance(value, dict) and set(value) == {"name", "template"}:
            name, template = str(value["name"]), str(value["template"])
            return ExtendedPrompt(name, template) if uses_extended_language(template) else Prompt(name, template)
    except PromptTemplateError as error:
        raise SweepSpecError(str(error)) from None
    raise SweepSpecError(
        f"a prompt is a preset name or {{'name': ..., 'template': ...[, 'examples_per_class': k]}}, got {value!r}"
    )


def _prompt_dict(prompt: Prompt) -> dict[str, Any]:
    """An ExtendedPrompt always carries examples_per_class, which is what marks it as one when read back."""
    if isinstance(prompt, ExtendedPrompt):
        return {"name": prompt.name, "template": prompt.template, "examples_per_class": prompt.examples_per_class}
    return {"name": prompt.name, "template": prompt.template}
