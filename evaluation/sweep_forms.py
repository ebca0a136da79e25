"""The Sweeps tab's form, as the widgets deliver it, turned into a SweepSpec, and the spec's data checked.

Why apart from the UI: the same fields arrive from the page, from gradio_client and from tests, and
each must fail with a sentence that names the field before anything is copied or queued. A paper
experiment (evaluation.presets) or an uploaded fork YAML (evaluation.fork_config) brings its own
questions and runs on the form's data, sample limit, seed, scoring mode and mapping.
Alphas are read with the one alpha grammar (naturelm_core.alphas); merge recipes typed in their own
field, or as JSON objects among the alphas, become the spec's `recipes`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from evaluation.datasets import DatasetError, cached_subset_path
from evaluation.fork_config import ForkConfig, read_fork_config
from evaluation.presets import get_preset, preset_of
from evaluation.prompts import PAPER_PROMPTS, Prompt, custom_prompt
from evaluation.scoring import ScoringMode
from evaluation.sweep import AnswerMode, DataSource, SweepSpec, plan_sweep
from evaluation.sweep_uploads import UPLOADS_DIR, persist_mapping, persist_uploads, slug
from naturelm_core.alphas import (
    DEFAULT_ALPHA_TEXT,
    MergeRecipe,
    check_grid_point,
    parse_alpha_grid,
    parse_recipe_text,
)


class SweepFormError(ValueError):
    """A form field the user has to fix before a sweep can start (the message names the field)."""


@dataclass(frozen=True)
class SweepForm:
    """The Sweeps tab's fields as the widgets deliver them (uploads are temporary file paths).

    The UI passes its widgets by these names (gradio's inputs_kwargs), so a field cannot be
    delivered to the wrong name; `field_names` is what the wiring is checked against.
    """

    name: str = ""
    source: str = DataSource.BEANS_ZERO.value
    subsets: Sequence[str] = ()
    local_path: str = ""
    labels_csv: str | None = None
    recordings: Sequence[str] = ()
    recordings_name: str = "my-recordings"
    presets: Sequence[str] = ()
    custom_prompts: str = ""
    alphas: str = DEFAULT_ALPHA_TEXT
    recipes: str = ""
    limit: float | None = None
    top_k_classes: float | None = None
    seed: float | None = 0
    num_beams: float | None = 2
    max_new_tokens: float | None = 100
    scoring_mode: str = ScoringMode.PAPER.value
    mapping_file: str | None = None
    answer_mode: str = AnswerMode.GENERATE.value

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def from_widgets(cls, values: dict[str, Any]) -> SweepForm:
        """The form from widget values by name; an empty upload or selection arrives as None and means ()."""
        cleaned = {k: (v or ()) if k in ("subsets", "recordings", "presets") else v for k, v in values.items()}
        return cls(**cleaned)


def parse_prompts(presets: Sequence[str], custom: str) -> tuple[Prompt, ...]:
    """Checked presets, then one custom prompt per non-empty line (named custom, or custom-1, custom-2, ...)."""
    unknown = [name for name in presets if name not in PAPER_PROMPTS]
    if unknown:
        raise SweepFormError(f"unknown preset prompt(s) {unknown}; presets: {sorted(PAPER_PROMPTS)}")
    prompts = [PAPER_PROMPTS[name] for name in presets]
    lines = [line.strip() for line in (custom or "").splitlines() if line.strip()]
    names = ["custom"] if len(lines) == 1 else [f"custom-{i}" for i in range(1, len(lines) + 1)]
    prompts += [custom_prompt(name, line) for name, line in zip(names, lines, strict=True)]
    if not prompts:
        raise SweepFormError("choose at least one preset prompt or write a custom one")
    return tuple(prompts)


def optional_count(value: float | None, field: str) -> int | None:
    """Number boxes: empty or 0 means 'no limit'."""
    if value is None or value == 0:
        return None
    if value < 0 or value != int(value):
        raise SweepFormError(f"{field} must be a whole number >= 0 (0 = all), got {value:g}")
    return int(value)


def _whole(value: float | None, field: str, minimum: int) -> int:
    if value is None or value != int(value) or value < minimum:
        raise SweepFormError(f"{field} must be a whole number >= {minimum}, got {value}")
    return int(value)


def grid_fields(alphas: str, recipes: str = "") -> dict[str, tuple]:
    """The spec's `alphas` and `recipes` from the typed grid and the merge-recipes field (a JSON list);
    either may be empty (not both), and a recipe of nothing but an alpha counts as that alpha."""
    typed = parse_recipe_text(recipes) if (recipes or "").strip() else []
    points = parse_alpha_grid(alphas) if (alphas or "").strip() or not typed else ()  # both empty: say so
    checked = [check_grid_point(point) for point in (*points, *typed)]
    return {
        "alphas": tuple(p for p in checked if not isinstance(p, MergeRecipe)),
        "recipes": tuple(p for p in checked if isinstance(p, MergeRecipe)),
    }


def spec_from_form(
    form: SweepForm, runs_dir: str | os.PathLike[str], grid: dict[str, tuple] | None = None
) -> SweepSpec:
    """The spec the form describes; uploads are copied under the runs folder so the sweep can be resumed later.

    `grid` (alphas and recipes) replaces the form's own: a preset that runs on the form's data brings it.
    """
    source = _data_source(form.source)
    values: dict[str, Any] = {  # checked before any upload is copied
        "name": (form.name or "").strip() or "sweep",
        "source": source,
        "prompts": parse_prompts(form.presets, form.custom_prompts),
        **(grid if grid is not None else grid_fields(form.alphas, form.recipes)),
        "limit": optional_count(form.limit, "sample limit"),
        "top_k_classes": optional_count(form.top_k_classes, "top-k classes"),
        "seed": _whole(form.seed, "seed", 0),
        "num_beams": _whole(form.num_beams, "beams", 1),
        "max_new_tokens": _whole(form.max_new_tokens, "max new tokens", 1),
        "scoring_mode": ScoringMode(form.scoring_mode),
        "answer_mode": _answer_mode(form.answer_mode),
    }
    if source is DataSource.RECORDINGS:
        if not form.labels_csv:
            raise SweepFormError("upload the labels CSV (columns file,label[,scientific_label])")
        if not form.recordings:
            raise SweepFormError("upload the recordings the labels CSV names")
        name = slug(form.recordings_name)
        uploads = Path(runs_dir) / UPLOADS_DIR
        folder = persist_uploads([*form.recordings, form.labels_csv], uploads, rename={form.labels_csv: "labels.csv"})
        values.update(path=str(folder), labels_csv=str(folder / "labels.csv"), subsets=(name,))
    else:
        if not form.subsets:
            raise SweepFormError("choose at least one BEANS-Zero subset")
        values["subsets"] = tuple(form.subsets)
        if source is DataSource.PARQUET:
            values["path"] = _local_parquet(form.local_path)
    if form.mapping_file:
        values["mapping_file"] = persist_mapping(form.mapping_file, runs_dir)
    return SweepSpec(**values)


def _answer_mode(value: str | None) -> AnswerMode:
    try:
        return AnswerMode(value or AnswerMode.GENERATE.value)
    except ValueError:
        raise SweepFormError(f"unknown answer mode {value!r}; choose {[m.value for m in AnswerMode]}") from None


def _data_source(value: str) -> DataSource:
    try:
        return DataSource(value)
    except ValueError:
        raise SweepFormError(f"unknown data source {value!r}") from None


def _local_parquet(text: str) -> str:
    if not (text or "").strip():
        raise SweepFormError("give the local parquet file or folder")
    local = Path(text.strip()).expanduser()
    if not local.exists():
        raise SweepFormError(f"{local} does not exist on the server")
    return str(local.resolve())


def check_spec_data(spec: SweepSpec) -> int | None:
    """Items the sweep will ask, found by reading ids and labels only; None where that would mean a long
    BEANS-Zero download (the sweep's own thread does it). Bad data and mappings fail here, at Start."""
    spec.label_mapping()
    if spec.source is DataSource.BEANS_ZERO and not all(cached_subset_path(s).is_file() for s in spec.subsets):
        return None
    plans = plan_sweep(spec)
    if spec.source is DataSource.RECORDINGS:
        present = {path.name for path in Path(spec.path).iterdir()}
        missing = sorted({i for plan in plans for i in plan.sample_ids} - present)
        if missing:
            raise SweepFormError(f"the labels CSV names recordings that were not uploaded: {missing[:10]}")
    items = sum(len(plan.sample_ids) for plan in plans) * spec.items_per_sample
    if items == 0:
        raise DatasetError("the chosen data has no samples")
    return items


def _beans_zero_data(form: SweepForm, what: str) -> tuple[DataSource, str | None]:
    """Presets and fork configs name BEANS-Zero's own data sets: the Hub copy or a local parquet copy of it."""
    source = _data_source(form.source)
    if source is DataSource.RECORDINGS:
        raise SweepFormError(
            f"{what} names BEANS-Zero data sets: choose BEANS-Zero or a local parquet copy as the data, not "
            "uploaded recordings"
        )
    return source, _local_parquet(form.local_path) if source is DataSource.PARQUET else None


def spec_from_preset(key: str | None, form: SweepForm, runs_dir: str | os.PathLike[str], alphas: str = "") -> SweepSpec:
    """The preset's sweep on the form's data, sample limit, seed, decoding, scoring mode and mapping.

    `alphas` empty keeps the preset's own grid (the paper's); anything else replaces it. A merge-recipe
    preset (`on_form_data`) asks the form's own prompts of the form's own data.
    """
    if not key:
        raise SweepFormError("choose a paper experiment first")
    preset = get_preset(key)
    grid = grid_fields(alphas) if (alphas or "").strip() else None
    if preset.on_form_data:
        return spec_from_form(replace(form, name=preset.sweep_name), runs_dir, grid or preset.grid())
    source, path = _beans_zero_data(form, "a paper experiment")
    options: dict[str, Any] = {  # checked before the mapping upload is copied
        "source": source,
        "path": path,
        "limit": optional_count(form.limit, "sample limit"),
        "seed": _whole(form.seed, "seed", 0),
        "num_beams": _whole(form.num_beams, "beams", 1),
        "max_new_tokens": _whole(form.max_new_tokens, "max new tokens", 1),
        "scoring_mode": ScoringMode(form.scoring_mode),
        **(grid or {}),
    }
    preset.spec(**options)  # a bad option fails here, before anything is copied
    mapping = persist_mapping(form.mapping_file, runs_dir) if form.mapping_file else None
    return preset.spec(**options, mapping_file=mapping)


def preset_run_notes(spec: SweepSpec) -> tuple[str, ...]:
    """The preset's caveats that apply to this run: a preset that needs a mapping, started without one."""
    preset = preset_of(spec)
    if preset is None or not preset.needs_mapping or spec.mapping_file:
        return ()
    return preset.notes


def fork_config_from_upload(
    upload: str | None, form: SweepForm, mapping_file: str | os.PathLike[str] | None = None
) -> ForkConfig:
    """An uploaded fork YAML read on the form's data, sample limit, seed and scoring mode (decoding is its own).

    Raises ForkConfigError, whose message names the offending key, or SweepFormError for the form.
    """
    if not upload:
        raise SweepFormError("upload a YAML config in the paper fork's format (.yml or .yaml) first")
    _, path = _beans_zero_data(form, "a fork config")
    return read_fork_config(
        Path(upload),
        data_path=path,
        limit=optional_count(form.limit, "sample limit"),
        seed=_whole(form.seed, "seed", 0),
        scoring_mode=form.scoring_mode,
        mapping_file=mapping_file,
    )


def spec_from_fork_upload(upload: str | None, form: SweepForm, runs_dir: str | os.PathLike[str]) -> ForkConfig:
    """As fork_config_from_upload, with the mapping upload kept under the runs folder so the sweep can resume."""
    config = fork_config_from_upload(upload, form)  # checked before the mapping upload is copied
    if not form.mapping_file:
        return config
    mapping = persist_mapping(form.mapping_file, runs_dir)
    return replace(config, spec=replace(config.spec, mapping_file=mapping))
