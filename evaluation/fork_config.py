"""The paper's fork drives every experiment from a YAML config; read one as a SweepSpec, unchanged.

A fork config has three sections. `model:` describes the checkpoint (the fork's inference script
loads the published model and ignores it, and so do we, after checking its key names); `generate:`
gives the decoding settings, of which we honour num_beams and max_new_tokens and refuse values
our decoder does not implement; `extended:` is the experiment: data sets, the alpha grid
(`lora_scales`), the species (`species` or `top_k_species`), the queries in the fork's template
language (evaluation.icl) and `n_examples`, the in-context examples per species. Queries are named
"0", "1", ... after their position, as the fork names its output files (`query0`, ...).

Anything a config says that we cannot honour is refused with a message naming the key; settings
that are read but change nothing are returned as notes for the user.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from evaluation.datasets import SUBSETS
from evaluation.icl import (
    DEFAULT_EXAMPLES_PER_CLASS,
    ExtendedPrompt,
    InContextError,
    Species,
    parse_species,
    template_fields,
)
from evaluation.prompts import Prompt, PromptTemplateError
from evaluation.scoring import ScoringMode
from evaluation.sweep import DataSource, SweepSpec, SweepSpecError
from naturelm_core.config import BEATsConfig, NatureLMConfig

SECTIONS = ("model", "generate", "extended")
MODEL_KEYS = frozenset(f.name for f in fields(NatureLMConfig)) - {"source_dir"}
BEATS_KEYS = frozenset(f.name for f in fields(BEATsConfig))
GENERATE_KEYS = frozenset(
    {"max_new_tokens", "num_beams", "do_sample", "min_length", "temperature", "repetition_penalty", "length_penalty"}
)
EXTENDED_KEYS = frozenset({"datasets", "lora_scales", "species", "top_k_species", "queries", "n_examples"})
# Decoding options whose only implemented value is the fork's default: any other value is refused.
NEUTRAL_GENERATION = {"do_sample": False, "repetition_penalty": 1.0, "length_penalty": 1.0}
YAML_SUFFIXES = (".yml", ".yaml")


class ForkConfigError(SweepSpecError):
    """A fork config that cannot be run as written; the message names the offending key."""


@dataclass(frozen=True)
class ForkConfig:
    """A fork config read as a sweep: the spec, the model section as a config, and what was read but not applied."""

    spec: SweepSpec
    model: NatureLMConfig
    notes: tuple[str, ...]


def read_fork_config(
    source: str | os.PathLike[str],
    *,
    name: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    scoring_mode: ScoringMode | str = ScoringMode.PAPER,
    mapping_file: str | os.PathLike[str] | None = None,
) -> ForkConfig:
    """Read a fork config from a path (a PathLike, or a str ending in .yml/.yaml) or from YAML text.

    The config cannot say where the data is or how much of it to use (the fork takes those on its
    command line): `data_path` is a local BEANS-Zero copy (parquet file or folder, or a
    save_to_disk folder; default: the Hub through the cache) and `limit` caps samples per data set.
    """
    text, default_name = _read_source(source)
    data = _parse_yaml(text)
    notes: list[str] = []
    model = _model_section(data.get("model"), notes)
    num_beams, max_new_tokens = _generate_section(data.get("generate"), notes)
    extended = _section(data.get("extended"), "extended", EXTENDED_KEYS)
    subsets = _datasets(extended)
    species, top_k = _species(extended, subsets)
    try:
        spec = SweepSpec(
            name=name or default_name,
            subsets=subsets,
            prompts=_queries(extended),
            alphas=_lora_scales(extended),
            source=DataSource.BEANS_ZERO if data_path is None else DataSource.PARQUET,
            path=None if data_path is None else str(Path(data_path).expanduser().resolve()),
            limit=limit,
            top_k_classes=top_k,
            seed=seed,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            scoring_mode=ScoringMode(scoring_mode),
            mapping_file=None if mapping_file is None else str(Path(mapping_file).expanduser().resolve()),
            species=species,
        )
    except ValueError as error:  # SweepSpecError included: a bad alpha, limit, ...
        raise ForkConfigError(str(error)) from None
    return ForkConfig(spec, model, tuple(notes))


def spec_from_yaml(source: str | os.PathLike[str], **options: Any) -> SweepSpec:
    """The sweep spec of a fork config (see read_fork_config for the source and the options)."""
    return read_fork_config(source, **options).spec


def is_yaml_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def _read_source(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(YAML text, a sweep name): the file's stem, or "fork config" for text."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source and is_yaml_path(source)):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8"), path.stem
        except FileNotFoundError:
            raise ForkConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ForkConfigError(f"config file {path} cannot be read: {error}") from None
    if not isinstance(source, str):
        raise ForkConfigError(f"a fork config is a path or YAML text, got {type(source).__name__}")
    return source, "fork config"


def _parse_yaml(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ForkConfigError(f"the config is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ForkConfigError(f"a fork config is a YAML mapping with sections {list(SECTIONS)}, got {data!r}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ForkConfigError(f"unknown top-level key(s) {unknown}; a fork config has {list(SECTIONS)}")
    if "extended" not in data:
        raise ForkConfigError("the config has no 'extended' section: it names the data sets, alphas and queries")
    return data


def _section(value: Any, name: str, known: frozenset[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ForkConfigError(f"'{name}' must be a mapping, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ForkConfigError(f"unknown key(s) {[f'{name}.{key}' for key in unknown]}; '{name}' knows {sorted(known)}")
    return value


def _model_section(value: Any, notes: list[str]) -> NatureLMConfig:
    """Checked key by key; the served checkpoint decides the model, as in the fork's inference script."""
    section = dict(_section(value, "model", MODEL_KEYS))
    beats = _section(section.pop("beats_cfg", None), "model.beats_cfg", BEATS_KEYS)
    try:
        config = NatureLMConfig.from_dict({**section, "beats_cfg": beats})
    except (TypeError, ValueError) as error:
        raise ForkConfigError(f"the model section is not a NatureLM config: {error}") from None
    published = NatureLMConfig()
    differing = [key for key in section if _differs(getattr(config, key), getattr(published, key))]
    differing += [
        f"beats_cfg.{key}"
        for key in beats
        if _differs(getattr(config.beats_cfg, key), getattr(published.beats_cfg, key))
    ]
    if differing:
        notes.append(
            f"model settings {differing} differ from the published NatureLM-audio; the model answering is the "
            "checkpoint being served, as in the fork, whose inference ignores the model section"
        )
    return config


def _differs(value: Any, published: Any) -> bool:
    """An empty string and null both mean "not set" in these configs (audio_llama_proj_model: "")."""
    return (None if value == "" else value) != (None if published == "" else published)


def _generate_section(value: Any, notes: list[str]) -> tuple[int, int]:
    """(num_beams, max_new_tokens); other options must be ones our decoder implements."""
    section = _section(value, "generate", GENERATE_KEYS)
    for key, neutral in NEUTRAL_GENERATION.items():
        if key in section and section[key] != neutral:
            raise ForkConfigError(
                f"generate.{key} = {section[key]!r} is not supported; only {neutral!r} is implemented"
            )
    min_length = section.get("min_length", 0)
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length > 1:
        raise ForkConfigError(
            f"generate.min_length = {min_length!r} is not supported; 0 or 1 (no effect when generating from "
            "embeddings, as the fork does) are"
        )
    temperature = section.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature):
            raise ForkConfigError(f"generate.temperature must be a number, got {temperature!r}")
        notes.append(f"generate.temperature = {temperature} has no effect: decoding is deterministic (do_sample False)")
    num_beams = section.get("num_beams", 2)
    max_new_tokens = section.get("max_new_tokens", 100)
    for key, number in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ForkConfigError(f"generate.{key} must be a positive integer, got {number!r}")
    return num_beams, max_new_tokens


def _datasets(extended: Mapping[str, Any]) -> tuple[str, ...]:
    """The listed subsets; none listed means every BEANS-Zero subset, as in the fork."""
    datasets = extended.get("datasets")
    if not datasets:
        return tuple(SUBSETS)
    if isinstance(datasets, str) or not isinstance(datasets, list):
        raise ForkConfigError(f"extended.datasets must be a list of subset names, got {datasets!r}")
    if not all(isinstance(name, str) and name.strip() for name in datasets):
        raise ForkConfigError(f"extended.datasets must hold subset names, got {datasets!r}")
    return tuple(datasets)


def _species(extended: Mapping[str, Any], subsets: tuple[str, ...]) -> tuple[tuple[Species, ...], int | None]:
    species, top_k = extended.get("species"), extended.get("top_k_species")
    if species and top_k:
        raise ForkConfigError(
            "extended.species and extended.top_k_species are mutually exclusive: name the species, or keep the "
            "k most frequent ones"
        )
    if top_k:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ForkConfigError(f"extended.top_k_species must be a positive integer, got {top_k!r}")
        if len(subsets) != 1:
            raise ForkConfigError(
                f"extended.top_k_species keeps the most frequent classes of a single data set; {len(subsets)} are "
                f"listed ({list(subsets)})"
            )
        return (), top_k
    if not species:
        return (), None
    try:
        return parse_species(species, where="extended.species"), None
    except InContextError as error:
        raise ForkConfigError(str(error)) from None


def _queries(extended: Mapping[str, Any]) -> tuple[Prompt, ...]:
    queries = extended.get("queries")
    if not queries:
        raise ForkConfigError(
            "extended.queries is missing: give at least one query (the fork's fallback, each row's own BEANS-Zero "
            "instruction, is not a sweep prompt)"
        )
    if isinstance(queries, str) or not isinstance(queries, list):
        raise ForkConfigError(f"extended.queries must be a list of query templates, got {queries!r}")
    k = extended.get("n_examples", DEFAULT_EXAMPLES_PER_CLASS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ForkConfigError(f"extended.n_examples must be an integer >= 0, got {k!r}")
    prompts: list[Prompt] = []
    for index, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise ForkConfigError(f"extended.queries[{index}] must be non-empty text, got {query!r}")
        try:
            # Any placeholder makes it the fork's language: {species_list} alone keeps the configured order there.
            placeholders = template_fields(query)
            if placeholders:
                examples = k if "audio_examples" in placeholders else DEFAULT_EXAMPLES_PER_CLASS
                prompts.append(ExtendedPrompt(str(index), query, examples))
            else:
                prompts.append(Prompt(str(index), query))
        except PromptTemplateError as error:
            raise ForkConfigError(f"extended.queries[{index}]: {error}") from None
    return tuple(prompts)


def _lora_scales(extended: Mapping[str, Any]) -> tuple[float, ...]:
    scales = extended.get("lora_scales")
    if scales is None:
        raise ForkConfigError("extended.lora_scales is missing: list the alphas to run (0 = Llama, 1 = NatureLM-audio)")
    if isinstance(scales, str) or not isinstance(scales, list):
        raise ForkConfigError(f"extended.lora_scales must be a list of numbers, got {scales!r}")
    return tuple(scales)
