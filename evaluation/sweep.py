"""Sweeps: a grid of (sample, prompt, alpha) answers from the model that also serves the app, kept on disk.

    python -m evaluation.sweep SPEC.json [SPEC.json ...] [--runs-dir DIR] [--model SRC] [--demo]
    python -m evaluation.sweep CONFIG.yml [--data-path BEANS_ZERO_COPY] [--limit N]   (the paper fork's configs)
    python -m evaluation.sweep SPEC.json --ray [ADDRESS] [--ray-actors N]   (on a Ray cluster: ray_backend.py)

A SweepSpec names the data, the prompts, the alpha grid and the generation settings; its id is
derived from what decides the answers, so running the same spec again resumes it. The runner
submits work to the shared Engine at sweep priority (interactive users still go first), sample by
sample: all (prompt, alpha) rows of one recording are queued together, so the worker batches them
and encodes the recording once for every prompt and alpha. Finished rows are appended to
runs/<id>/results.jsonl and fsynced a group at a time; a restart skips every row already there,
and a cancel stops submitting and writes what is in flight. Metrics and figures are recomputed from
the file (evaluation.sweep_plots), so nothing lives only in memory.

Exit codes of the command line: 0 every sweep complete, 1 a sweep failed or was cancelled,
2 bad input (spec, data, model), 3 the runs folder cannot be written.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from evaluation.datasets import (
    DatasetError,
    Sample,
    SampleRow,
    Subset,
    UnreadableRowError,
    cached_subset_path,
    load_recordings,
    load_subset,
)
from evaluation.icl import (
    ContextBudget,
    ExampleBank,
    ExtendedPrompt,
    InContextError,
    Species,
    examples_needed,
    parse_species,
    uses_extended_language,
)
from evaluation.prefetch import default_workers, prefetch_map
from evaluation.prompts import PAPER_PROMPTS, Prompt, PromptTemplateError
from evaluation.reference import LabelMapping, load_label_mapping
from evaluation.results import ResultRow
from evaluation.runs import (
    ResultsCorruptError,
    RunsStorageError,
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    default_runs_dir,
)
from evaluation.scoring import GroupScore, ScoringMode, score_rows

if TYPE_CHECKING:
    from evaluation.ray_backend import RayBackend
    from naturelm_core.engine import Engine, GenerationSettings

logger = logging.getLogger(__name__)

# Sweep rows may wait behind interactive users for a long time; that is not a failure.
SWEEP_REQUEST_TIMEOUT_S = 24 * 3600.0
# A group of rows that all failed, this many times in a row, means the model is broken: stop.
MAX_FAILED_GROUPS_IN_A_ROW = 3
# Extra source samples kept past the model window, so resampling the cut clip matches resampling the whole.
RESAMPLE_MARGIN_S = 0.1
MAX_WINDOW_S = 10.0
# Recordings decoded ahead of the one being submitted, per decode thread: slack for a slow file at the head
# while the other threads go on. Only model windows wait (the full audio is dropped on the decode thread).
DECODE_AHEAD_PER_WORKER = 4

EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3


class SweepSpecError(ValueError):
    """A sweep spec that cannot be run as written: missing fields, bad values, unknown preset prompts."""


class DataSource(StrEnum):
    BEANS_ZERO = "beans-zero"  # the Hub, through the local subset cache
    PARQUET = "parquet"  # a local parquet file or folder of BEANS-Zero shards
    RECORDINGS = "recordings"  # a folder of recordings + labels CSV


# Fields whose values decide the answers; the sweep id hashes these, so scoring options can change freely.
ANSWER_FIELDS = (
    "source",
    "path",
    "labels_csv",
    "subsets",
    "limit",
    "top_k_classes",
    "prompts",
    "alphas",
    "seed",
    "num_beams",
    "max_new_tokens",
    "window_s",
    "species",
)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs; saved as runs/<sweep-id>/spec.json.

    `limit` is per subset: that many samples chosen by a seeded hash of their ids (a reproducible
    random subset, not the first rows, which are often grouped by class). `top_k_classes` keeps the
    rows of the k most frequent labels first. `window_s` overrides each subset's model window.
    `species` keeps the rows of these labels only and lists them in this order (the fork's
    `species:`); `max_context_tokens` caps the positions one row may take, its recordings and answer
    included (default: the LLM's max_position_embeddings).
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

    def __post_init__(self) -> None:
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
        _check_alphas(self.alphas)
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
        if self.window_s is not None and not 0.5 <= self.window_s <= MAX_WINDOW_S:
            raise SweepSpecError(f"window_s must lie in [0.5, {MAX_WINDOW_S:g}] s, got {self.window_s}")

    # -- identity --------------------------------------------------------------------------

    @property
    def sweep_id(self) -> str:
        """`<slug of the name>-<hash of the answer-deciding fields>`: the same spec always resumes the same sweep."""
        answer_fields = {key: value for key, value in self.to_dict().items() if key in ANSWER_FIELDS}
        digest = hashlib.sha256(json.dumps(answer_fields, sort_keys=True).encode()).hexdigest()[:10]
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:40].strip("-") or "sweep"
        return f"{slug}-{digest}"

    @property
    def items_per_sample(self) -> int:
        return len(self.prompts) * len(self.alphas)

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """species and max_context_tokens came after sweeps existed: written only when set, so older ids stay."""
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> SweepSpec:
        """Build a spec from JSON-like data; prompts may be preset names ("common") or {name, template}.

        Relative paths are resolved against `base_dir` (the spec file's folder) or the working folder,
        and stored absolute, so a saved spec resumes from anywhere.
        """
        if not isinstance(data, dict):
            raise SweepSpecError(f"a sweep spec is a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepSpecError(f"unknown spec field(s) {unknown}; known fields: {sorted(known)}")
        missing = [key for key in ("name", "subsets", "prompts", "alphas") if key not in data]
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
        values["alphas"] = tuple(_as_list(values["alphas"], "alphas"))
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        for key in ("path", "labels_csv", "mapping_file"):
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
        from naturelm_core.engine import GenerationSettings

        return GenerationSettings(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)

    def label_mapping(self) -> LabelMapping | None:
        return load_label_mapping(self.mapping_file) if self.mapping_file else None


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


def _check_alphas(alphas: Sequence[Any]) -> None:
    if not alphas:
        raise SweepSpecError("the alpha grid is empty")
    for value in alphas:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SweepSpecError(f"alpha {value!r} is not a number")
        if not 0.0 <= value <= 1.0:
            raise SweepSpecError(f"alpha {value} is outside [0, 1] (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)")
    keys = [alpha_key(a) for a in alphas]
    if len(set(keys)) != len(keys):
        raise SweepSpecError(f"the alpha grid lists a value twice: {list(alphas)}")


# ----------------------------------------------------------------------------------------------
# Work items


def alpha_key(alpha: float) -> float:
    """Alphas compared as keys: 0.30000000000000004 and 0.3 are the same grid point."""
    return round(float(alpha), 6)


ItemKey = tuple[str, str, str, float]


def item_key(dataset: str, sample_id: str, prompt_name: str, alpha: float) -> ItemKey:
    return (dataset, sample_id, prompt_name, alpha_key(alpha))


@dataclass(frozen=True)
class WorkItem:
    """One answer to produce: a sample, a prompt (rendered for that sample) and an alpha.

    `example_ids` are the in-context example recordings of the prompt's placeholders, in order; the
    sample itself fills the last placeholder.
    """

    dataset: str
    sample_id: str
    prompt_name: str
    prompt_text: str
    alpha: float
    example_ids: tuple[str, ...] = ()

    @property
    def key(self) -> ItemKey:
        return item_key(self.dataset, self.sample_id, self.prompt_name, self.alpha)


@dataclass
class SubsetPlan:
    """The samples of one subset a sweep asks about, in source order, and the labels closed-set prompts list.

    `examples` holds the in-context example recordings once the runner has read them (load_examples).
    """

    subset: Subset
    sample_ids: list[str]
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: ExampleBank | None = None

    @property
    def name(self) -> str:
        return self.subset.name


def select_sample_ids(ids: Sequence[str], limit: int | None, seed: int) -> list[str]:
    """`limit` ids chosen by a seeded hash (reproducible anywhere, independent of row order), kept in source order."""
    unique = list(dict.fromkeys(ids))
    if limit is None or limit >= len(unique):
        return unique
    ranked = sorted(unique, key=lambda i: hashlib.sha256(f"{seed}\x1f{i}".encode()).digest())
    chosen = set(ranked[:limit])
    return [i for i in unique if i in chosen]


def open_subset(spec: SweepSpec, name: str) -> Subset:
    if spec.source is DataSource.RECORDINGS:
        window = spec.window_s if spec.window_s is not None else MAX_WINDOW_S
        return load_recordings(spec.path, spec.labels_csv, name=name, window_s=window)
    return load_subset(name, spec.path, window_s=spec.window_s)


def plan_sweep(spec: SweepSpec) -> list[SubsetPlan]:
    """Open every subset and choose its samples (reads ids and labels only, no audio)."""
    plans = []
    for name in spec.subsets:
        subset = open_subset(spec, name)
        # The species in the order prompts list them without {randomize}: as given, or the most frequent first.
        labels = None
        if spec.species:
            labels = [s.name for s in spec.species]
            subset = subset.with_classes(labels)
        elif spec.top_k_classes is not None:
            subset = subset.top_k_classes(spec.top_k_classes)
            labels = list(subset.label_counts())
        ids = select_sample_ids(subset.ids(), spec.limit, spec.seed)
        descriptions = {s.name: s.description for s in spec.species}
        plans.append(SubsetPlan(subset, ids, labels or subset.labels(), descriptions))
    return plans


def load_examples(spec: SweepSpec, plan: SubsetPlan) -> None:
    """Read the subset's in-context example recordings into the plan (one pass), if any prompt uses them."""
    from naturelm_core.audio import AudioError

    k = examples_needed(spec.prompts)
    if k and plan.examples is None:
        plan.examples = ExampleBank.collect(
            plan.subset, plan.labels, k, spec.seed, model_window, unusable=(AudioError,), dataset=plan.name
        )


def sample_items(spec: SweepSpec, plan: SubsetPlan, sample_id: str) -> list[WorkItem]:
    """A sample's rows, prompt-major; closed-set prompts list the labels in this sample's own seeded order."""
    items = []
    for prompt in spec.prompts:
        if isinstance(prompt, ExtendedPrompt):
            rendered = prompt.render_for_sample(sample_id, plan.labels, spec.seed, plan.descriptions, plan.examples)
            text, example_ids = rendered.text, rendered.example_ids
        else:
            text, example_ids = prompt.render(sample_id, plan.labels, spec.seed), ()
        items.extend(WorkItem(plan.name, sample_id, prompt.name, text, float(a), example_ids) for a in spec.alphas)
    return items


def model_window(sample: Sample) -> np.ndarray:
    """The sample's first model window at 16 kHz mono (zero-padded), as the paper's evaluation truncates clips.

    Only the head of the clip is resampled: a long recording costs no more than a short one.
    """
    from naturelm_core.audio import load_audio, windows

    keep = math.ceil((sample.window_s + RESAMPLE_MARGIN_S) * sample.sample_rate)
    waveform, _ = load_audio(sample.audio[:keep], sample_rate=sample.sample_rate)
    return windows(waveform, window_s=sample.window_s, hop_s=sample.window_s)[0].samples


# ----------------------------------------------------------------------------------------------
# Sweep folders


def prepare_folder(runs_dir: str | os.PathLike[str] | None, spec: SweepSpec) -> SweepFolder:
    """Create runs/<id>/ and write spec.json (refreshing scoring options of an existing one)."""
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), spec.sweep_id).create()
    if folder.exists():
        try:
            saved = folder.read_spec()
        except (OSError, ValueError):
            saved = None
        if saved == spec.to_dict():
            return folder
    folder.write_spec(spec.to_dict())
    return folder


def load_spec(runs_dir: str | os.PathLike[str] | None, sweep_id: str) -> SweepSpec:
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), sweep_id)
    if not folder.exists():
        raise SweepSpecError(f"no sweep {sweep_id!r} in {folder.runs_dir}")
    return SweepSpec.from_json_file(folder.spec_path)


def load_results(runs_dir: str | os.PathLike[str] | None, sweep_id: str) -> list[ResultRow]:
    """The sweep's rows as written so far (a torn last line is ignored), one per item."""
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), sweep_id)
    return rows_from_records(folder.results.read())


def score_sweep(
    runs_dir: str | os.PathLike[str] | None, sweep_id: str, mode: ScoringMode | str | None = None
) -> list[GroupScore]:
    """The rows written so far, scored with the spec's mode, label mapping and planned label sets
    (or another `mode`)."""
    spec = load_spec(runs_dir, sweep_id)
    return score_rows(
        load_results(runs_dir, sweep_id),
        mode or spec.scoring_mode,
        mapping=spec.label_mapping(),
        label_sets=planned_label_sets(spec),
    )


@functools.lru_cache(maxsize=64)
def planned_label_sets(spec: SweepSpec) -> dict[str, frozenset[str]] | None:
    """Each subset's labels over the samples the sweep plans to answer: its finished results' label set.

    Scores of a running or cancelled sweep then snap answers to the labels the finished sweep's will,
    not only to those of the rows written so far (where "species 07" would snap to a seen "species 01"
    and count as correct). None where the data cannot be read here without a download (a moved
    folder, a BEANS-Zero subset no longer cached): scoring then uses the labels seen.
    """
    if spec.source is DataSource.BEANS_ZERO and not all(cached_subset_path(name).exists() for name in spec.subsets):
        return None
    try:
        return {plan.name: frozenset(plan.subset.labels_of(plan.sample_ids)) for plan in plan_sweep(spec)}
    except (DatasetError, OSError) as error:
        logger.info("sweep %s: scoring with the labels seen so far (%s)", spec.sweep_id, error)
        return None


def rows_from_records(records: Iterable[dict[str, Any]]) -> list[ResultRow]:
    """ResultRows, keeping the first row of any item written twice (only possible by hand-editing)."""
    rows: dict[ItemKey, ResultRow] = {}
    for record in records:
        row = ResultRow.from_dict(record)
        rows.setdefault(item_key(row.dataset, row.id, row.prompt_name, row.alpha), row)
    return list(rows.values())


# ----------------------------------------------------------------------------------------------
# The runner


@dataclass
class _InFlight:
    """One sample's rows submitted to the engine, with when each finished; only its label is kept, not its audio."""

    label: str
    items: list[WorkItem]
    futures: list[Future]
    submitted: float
    finished: dict[int, float] = field(default_factory=dict)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def wait(self) -> None:
        for future in self.futures:
            future.exception()  # waits without raising; SweepRunner._write_finished reads the outcome


ProgressCallback = Callable[[SweepStatus], None]
# One row to answer: an audio window per `<AudioHere>` of the prompt, the prompt, the alpha.
Row = tuple[list[np.ndarray], str, float]


@runtime_checkable
class SweepBackend(Protocol):
    """Where a sweep's rows are answered: this process's Engine, or workers elsewhere (evaluation.ray_backend).

    The runner alone reads the data and writes results.jsonl, whatever the backend, so the file,
    resume and metrics do not depend on where the answers were computed.
    """

    @property
    def inflight_rows(self) -> int:
        """Rows to keep queued so that every worker has its next batch ready."""
        ...

    def submit_group(self, rows: Sequence[Row], settings: GenerationSettings) -> list[Future]:
        """Queue the rows of one recording together (one worker, one encode); each Future resolves to the answer."""
        ...


class EngineBackend:
    """The local backend: rows go to the shared Engine at sweep priority, behind interactive users."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def inflight_rows(self) -> int:
        return 2 * self.engine.max_batch_rows

    def submit_group(self, rows: Sequence[Row], settings: GenerationSettings) -> list[Future]:
        from naturelm_core.engine import Priority

        return [
            self.engine.submit(
                windows,
                prompt,
                alpha,
                settings=settings,
                priority=Priority.SWEEP,
                timeout_s=SWEEP_REQUEST_TIMEOUT_S,
                block=True,
            )
            for windows, prompt, alpha in rows
        ]


def as_backend(engine: Engine | SweepBackend) -> SweepBackend:
    return engine if isinstance(engine, SweepBackend) else EngineBackend(engine)


class SweepRunner:
    """Runs (or resumes) one sweep on an Engine or another SweepBackend; `run()` returns the final status.

    At most `max_inflight_rows` rows (default: the backend's `inflight_rows`, at least two samples'
    worth) are queued at once, so every worker always has its next batch ready while a cancel or a
    crash loses at most what is in flight. Recordings are decoded and resampled on `decode_workers`
    threads (default: evaluation.prefetch.default_workers()) a few ahead of submission, so one
    thread's decoding does not starve a fast accelerator when a recording has few rows.
    """

    def __init__(
        self,
        engine: Engine | SweepBackend,
        spec: SweepSpec,
        runs_dir: str | os.PathLike[str] | None = None,
        *,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
        max_inflight_rows: int | None = None,
        decode_workers: int | None = None,
    ) -> None:
        if decode_workers is not None and decode_workers < 1:
            raise ValueError(f"decode_workers must be at least 1, got {decode_workers}")
        self.backend = as_backend(engine)
        self.spec = spec
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.cancel_event = cancel or threading.Event()
        self.on_progress = on_progress
        self.max_inflight_rows = max_inflight_rows or max(self.backend.inflight_rows, 2 * spec.items_per_sample)
        self.decode_workers = decode_workers or default_workers()
        self.folder = SweepFolder(self.runs_dir, spec.sweep_id)
        self.status = SweepStatus(spec.sweep_id, spec.name, SweepState.RUNNING, created_at=time.time())
        self._inflight: deque[_InFlight] = deque()
        self._done: set[ItemKey] = set()
        self._session_done = 0
        self._session_start = 0.0
        self._failed_groups_in_a_row = 0
        self._first_error = ""
        # The model's context where the backend serves it in this process; a remote backend's is not checked here.
        local_model = getattr(getattr(self.backend, "engine", None), "model", None)
        self._budget = ContextBudget.of_model(local_model, spec.max_context_tokens)

    # -- public ------------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self.cancel_event.is_set() or self.folder.cancel_requested()

    def run(self) -> SweepStatus:
        """Run to the end, a cancel, or an error (recorded in status.json, then raised)."""
        self.folder = prepare_folder(self.runs_dir, self.spec)
        with self.folder.lock():
            self.folder.clear_cancel()
            previous = self.folder.read_status()
            if previous is not None and previous.created_at:
                self.status.created_at = previous.created_at
            try:
                self._run_locked()
            except Exception as error:
                self._drain_quietly()
                message = str(error) if isinstance(error, RunsStorageError) else f"{type(error).__name__}: {error}"
                self._finish(SweepState.FAILED, best_effort=True, message=message)
                raise
        return self.status

    # -- internals -----------------------------------------------------------------------------

    def _run_locked(self) -> None:
        settings = self.spec.generation_settings()
        plans = plan_sweep(self.spec)
        planned = {
            item_key(plan.name, sample_id, prompt.name, alpha)
            for plan in plans
            for sample_id in plan.sample_ids
            for prompt in self.spec.prompts
            for alpha in self.spec.alphas
        }
        try:
            records = self.folder.results.read(repair=True)
        except ResultsCorruptError as error:
            raise ResultsCorruptError(f"{error}; fix or move the file before resuming") from error
        self._done = {key for key in map(_record_key, records) if key in planned}
        self.status.total = len(planned)
        self.status.done = len(self._done)
        self.status.pid = os.getpid()
        self.status.started_at = self._session_start = time.time()
        self._publish()
        for plan in plans:
            if self.cancelled() or self._failing():
                break
            self._submit_subset(plan, settings)
        while self._inflight:
            self._write_finished()
        if self.status.done == self.status.total:
            skipped = self.status.skipped_samples
            self._finish(SweepState.COMPLETE, message=f"{skipped} unreadable sample(s) skipped" if skipped else "")
        elif self.cancelled():
            self._finish(SweepState.CANCELLED, message="cancelled; resume to continue")
        elif self.status.failed or self._failing():
            self._finish(
                SweepState.FAILED,
                message=f"{self.status.failed} item(s) failed (first error: {self._first_error}); resume to retry them",
            )
        else:
            self._finish(SweepState.FAILED, message=f"{self.status.total - self.status.done} item(s) were not answered")

    def _submit_subset(self, plan: SubsetPlan, settings: GenerationSettings) -> None:
        """Submit the subset's unanswered samples in source order, decoding them on the prefetch threads.

        An id is answered from its first readable row, so an id none of whose rows can be decoded is skipped
        only at the end of the subset; a recording whose model window cannot be made is skipped at once.
        """
        from naturelm_core.audio import AudioError

        load_examples(self.spec, plan)
        seen: set[str] = set()
        unreadable: dict[str, str] = {}

        def decode_window(row: SampleRow) -> np.ndarray:  # on a prefetch thread, which also drops the full audio
            return model_window(plan.subset.decode(row))

        decoded = prefetch_map(
            decode_window,
            self._rows_to_decode(plan, seen),
            workers=self.decode_workers,
            ahead=DECODE_AHEAD_PER_WORKER * self.decode_workers,
        )
        with closing(decoded):
            for fetched in decoded:
                row = fetched.item
                if row.id in seen:
                    continue
                if isinstance(fetched.error, UnreadableRowError):
                    unreadable.setdefault(row.id, str(fetched.error))
                    continue
                seen.add(row.id)
                items = [item for item in sample_items(self.spec, plan, row.id) if item.key not in self._done]
                if not items:
                    continue
                if self.cancelled() or self._failing():
                    return
                if isinstance(fetched.error, AudioError):
                    self._skip_sample(plan.name, row.id, str(fetched.error))
                    continue
                # Any other decoding error is a bug, not a bad recording: result() raises it and the sweep fails.
                self._submit_sample(plan, row.label, items, fetched.result(), settings)
        for sample_id, reason in unreadable.items():
            if sample_id not in seen:
                self._skip_sample(plan.name, sample_id, reason)

    def _rows_to_decode(self, plan: SubsetPlan, seen: set[str]) -> Iterator[SampleRow]:
        """The rows worth decoding: wanted, not yet answered in this sweep (a resume decodes no finished sample)."""
        wanted = set(plan.sample_ids)
        for row in plan.subset.rows():
            if row.id in wanted and row.id not in seen and self._unanswered(plan.name, row.id):
                yield row

    def _submit_sample(
        self, plan: SubsetPlan, label: str, items: list[WorkItem], window: np.ndarray, settings: GenerationSettings
    ) -> None:
        """Queue one recording's rows together, then wait while more than `max_inflight_rows` are queued."""
        futures = self.backend.submit_group(self._rows(plan, items, window), settings)
        flight = _InFlight(label, items, futures, time.monotonic())
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, i=index, f=flight: f.finished.setdefault(i, time.monotonic()))
        self._inflight.append(flight)
        while sum(len(f.items) for f in self._inflight) > self.max_inflight_rows:
            self._write_finished()

    def _rows(self, plan: SubsetPlan, items: list[WorkItem], window: np.ndarray) -> list[Row]:
        """Each item's windows (its examples', then the sample's) and prompt; a prompt too long fails here."""
        rows: list[Row] = []
        checked: set[str] = set()
        for item in items:
            windows = [*(plan.examples.window(i) for i in item.example_ids), window] if item.example_ids else [window]
            if self._budget is not None and item.prompt_text not in checked:
                what = f"prompt {item.prompt_name!r} for {item.dataset}/{item.sample_id}"
                self._budget.check(item.prompt_text, [len(w) for w in windows], self.spec.max_new_tokens, what)
                checked.add(item.prompt_text)
            rows.append((windows, item.prompt_text, item.alpha))
        return rows

    def _skip_sample(self, dataset: str, sample_id: str, reason: str) -> None:
        """An unusable recording leaves the plan (it could never be answered) instead of failing the sweep."""
        logger.warning("sweep %s: skipping %s/%s: %s", self.spec.sweep_id, dataset, sample_id, reason)
        self.status.total -= self._unanswered(dataset, sample_id)
        self.status.skipped_samples += 1

    def _unanswered(self, dataset: str, sample_id: str) -> int:
        """The sample's items not yet in results.jsonl (by key alone: no prompt is rendered)."""
        return sum(
            item_key(dataset, sample_id, p.name, a) not in self._done
            for p in self.spec.prompts
            for a in self.spec.alphas
        )

    def _write_finished(self) -> None:
        """Wait for the oldest sample in flight, then write it and every finished one after it, in one fsync."""
        self._inflight[0].wait()
        group: list[_InFlight] = []
        while self._inflight and self._inflight[0].done():
            group.append(self._inflight.popleft())
        records: list[dict[str, Any]] = []
        written: set[ItemKey] = set()
        failed = 0
        for flight in group:
            for index, (item, future) in enumerate(zip(flight.items, flight.futures, strict=True)):
                if item.key in self._done or item.key in written:
                    continue  # an item answered twice (a backend that retried it) still gets one row
                error = future.exception()
                if error is not None:
                    failed += 1
                    self._first_error = self._first_error or str(error)
                    continue
                records.append(_record(flight, index, item, future.result()))
                written.add(item.key)
        self.folder.results.append(records)
        self._done.update(written)
        self.status.done = len(self._done)
        self.status.failed += failed
        self._session_done += len(records)
        self._failed_groups_in_a_row = self._failed_groups_in_a_row + 1 if failed and not records else 0
        self._publish()

    def _failing(self) -> bool:
        return self._failed_groups_in_a_row >= MAX_FAILED_GROUPS_IN_A_ROW

    def _drain_quietly(self) -> None:
        """After an error, let rows in flight finish so the engine is not left busy with an abandoned sweep."""
        for flight in self._inflight:
            flight.wait()
        self._inflight.clear()

    def _publish(self) -> None:
        elapsed = time.time() - self._session_start
        if self._session_done and elapsed > 0:
            self.status.rate_per_s = self._session_done / elapsed
            self.status.eta_s = max(0, self.status.total - self.status.done) / self.status.rate_per_s
        self.folder.write_status(self.status)
        if self.on_progress is not None:
            self.on_progress(self.status)

    def _finish(self, state: SweepState, message: str = "", best_effort: bool = False) -> None:
        self.status.state = state
        self.status.message = message
        self.status.finished_at = time.time()
        if state is SweepState.COMPLETE:
            self.status.eta_s = 0.0
        try:
            self._publish()
        except RunsStorageError:
            if not best_effort:
                raise


def _record(flight: _InFlight, index: int, item: WorkItem, prediction: str) -> dict[str, Any]:
    row = ResultRow(
        id=item.sample_id,
        dataset=item.dataset,
        prompt_name=item.prompt_name,
        prompt=item.prompt_text,
        alpha=item.alpha,
        prediction=prediction,
        label=flight.label,
    )
    finished = flight.finished.get(index, time.monotonic())
    examples = {"examples": list(item.example_ids)} if item.example_ids else {}
    timing = {"latency_s": round(finished - flight.submitted, 4), "written_at": round(time.time(), 3)}
    return {**row.to_dict(), **examples, **timing}


def _record_key(record: dict[str, Any]) -> ItemKey:
    try:
        return item_key(str(record["dataset"]), str(record["id"]), str(record["prompt_name"]), float(record["alpha"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ResultsCorruptError(f"a results row lacks a usable id/dataset/prompt_name/alpha: {record}") from error


def run_sweep(
    engine: Engine | SweepBackend,
    spec: SweepSpec,
    runs_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> SweepStatus:
    """Run or resume `spec` on `engine` (or a SweepBackend) in the calling thread (see SweepRunner for the options)."""
    return SweepRunner(engine, spec, runs_dir, **options).run()


# ----------------------------------------------------------------------------------------------
# Several sweeps, one after another


class SweepQueue:
    """Runs submitted sweeps one at a time in a background thread, on the engine the app already serves from.

    One sweep at a time keeps the accelerator's memory and the results' order predictable; the
    engine still interleaves interactive requests between the sweep's batches. `engine` may also be
    another SweepBackend (a Ray pool), which the queue then uses for every sweep it runs.
    """

    def __init__(
        self,
        engine: Engine | SweepBackend,
        runs_dir: str | os.PathLike[str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.engine = engine
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.on_progress = on_progress
        self.errors: dict[str, str] = {}
        self._pending: deque[SweepSpec] = deque()
        self._current: tuple[str, threading.Event] | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    @property
    def current(self) -> str | None:
        with self._changed:
            return self._current[0] if self._current else None

    def pending(self) -> list[str]:
        with self._changed:
            return [spec.sweep_id for spec in self._pending]

    def submit(self, spec: SweepSpec) -> str:
        """Queue a sweep (or its resumption); a sweep already queued or running here is not queued twice."""
        folder = prepare_folder(self.runs_dir, spec)
        with self._changed:
            if self._closed:
                raise RuntimeError("the sweep queue is closed")
            running_here = self._current is not None and self._current[0] == spec.sweep_id
            if running_here or any(queued.sweep_id == spec.sweep_id for queued in self._pending):
                return spec.sweep_id
            if folder.is_locked():
                raise SweepLockedError(f"sweep {spec.sweep_id} is already running in another process")
            previous = folder.read_status()
            status = previous or SweepStatus(spec.sweep_id, spec.name, SweepState.QUEUED, created_at=time.time())
            status.state, status.message, status.pid = SweepState.QUEUED, "", os.getpid()
            folder.write_status(status)
            self._pending.append(spec)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="sweep-queue", daemon=True)
                self._worker.start()
            self._changed.notify_all()
        return spec.sweep_id

    def resume(self, sweep_id: str) -> str:
        return self.submit(load_spec(self.runs_dir, sweep_id))

    def cancel(self, sweep_id: str) -> bool:
        """Cancel a sweep after its batch in flight, or drop a queued one; False if it is not running anywhere.

        A sweep run by another process (the headless command) is asked to stop through its cancel file.
        """
        with self._changed:
            if self._current and self._current[0] == sweep_id:
                self._current[1].set()
                return True
            for spec in list(self._pending):
                if spec.sweep_id == sweep_id:
                    self._pending.remove(spec)
                    folder = SweepFolder(self.runs_dir, sweep_id)
                    status = folder.read_status() or SweepStatus(sweep_id, spec.name, SweepState.CANCELLED)
                    status.state, status.message = SweepState.CANCELLED, "cancelled before it started"
                    folder.write_status(status)
                    self._changed.notify_all()
                    return True
        folder = SweepFolder(self.runs_dir, sweep_id)
        if folder.exists() and folder.is_locked():
            folder.request_cancel()
            return True
        return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending or self._current:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self) -> None:
        """Drop queued sweeps, cancel the running one after its batch in flight, and stop the thread."""
        with self._changed:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            if self._current:
                self._current[1].set()
            self._changed.notify_all()
        for spec in dropped:
            folder = SweepFolder(self.runs_dir, spec.sweep_id)
            status = folder.read_status() or SweepStatus(spec.sweep_id, spec.name, SweepState.CANCELLED)
            status.state, status.message = SweepState.CANCELLED, "the app stopped before it started"
            folder.write_status(status)
        if self._worker is not None:
            self._worker.join(timeout=60)

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                spec = self._pending.popleft()
                cancel = threading.Event()
                self._current = (spec.sweep_id, cancel)
            try:
                run_sweep(self.engine, spec, self.runs_dir, cancel=cancel, on_progress=self.on_progress)
            except Exception as error:  # recorded in status.json by the runner; the queue goes on
                logger.exception("sweep %s failed", spec.sweep_id)
                self.errors[spec.sweep_id] = f"{type(error).__name__}: {error}"
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    from naturelm_core.config import PUBLISHED_REPO_ID

    parser = argparse.ArgumentParser(
        prog="python -m evaluation.sweep",
        description="Run or resume sweeps headless; results land in RUNS_DIR/<sweep-id>/results.jsonl.",
    )
    parser.add_argument(
        "specs",
        nargs="+",
        type=Path,
        metavar="SPEC.json|CONFIG.yml",
        help="sweep specs or the paper's fork YAML configs (model/generate/extended), run one after another",
    )
    parser.add_argument("--data-path", default=None, help="YAML configs: a local BEANS-Zero copy (default: the Hub)")
    parser.add_argument("--limit", type=int, default=None, help="YAML configs: at most N samples per data set")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: $NATURELM_RUNS_DIR, /data/runs or runs/")
    parser.add_argument("--model", default=PUBLISHED_REPO_ID, help="Hub repo id or checkpoint folder")
    parser.add_argument("--llm", default=None, help="Llama Hub id or folder (default: the checkpoint's llama_path)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="the LLM's dtype")
    parser.add_argument("--demo", action="store_true", help="the tiny random model: exercises the pipeline only")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=None,
        help="rows per batched generate call (default: 176 on a GPU, 32 on CPU)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="answer on a Ray cluster (auto, host:6379, ray://host:10001); alone: start Ray on this machine",
    )
    parser.add_argument(
        "--ray-actors", type=int, default=None, metavar="N", help="Ray actors (default: one per GPU, else per CPU)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs = [load_spec_file(path, args.data_path, args.limit) for path in args.specs]
        for spec in specs:
            spec.generation_settings()
            plan_sweep(spec)  # bad data fails here, before minutes of model loading
    except (SweepSpecError, DatasetError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    engine = _start_ray_backend(args) if args.ray is not None else _start_engine(args)
    if isinstance(engine, int):
        return engine
    cancel = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGINT, lambda *_: _request_stop(cancel, previous_handler))
    exit_code = EXIT_COMPLETE
    try:
        for spec in specs:
            if cancel.is_set():
                exit_code = EXIT_INCOMPLETE
                break
            exit_code = max(exit_code, _run_with_progress(engine, spec, args.runs_dir, cancel))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        engine.stop()
    return exit_code


def load_spec_file(path: Path, data_path: str | None = None, limit: int | None = None) -> SweepSpec:
    """A JSON spec, or a fork YAML config (.yml/.yaml) read as one, with the data and limit it cannot name."""
    if path.suffix.lower() in (".yml", ".yaml"):
        from evaluation.fork_config import spec_from_yaml

        return spec_from_yaml(path, data_path=data_path, limit=limit)
    if data_path is not None or limit is not None:
        raise SweepSpecError(f"--data-path and --limit apply to YAML configs; the JSON spec {path} names its own")
    return SweepSpec.from_json_file(path)


def _start_engine(args: argparse.Namespace) -> Engine | int:
    from naturelm_core.engine import Engine, default_batch_rows
    from naturelm_core.loading import ModelLoadError, load_model
    from naturelm_core.startup import load_demo_model

    try:
        model = (
            load_demo_model(reason="--demo").model
            if args.demo
            else load_model(args.model, args.llm, args.device, args.dtype)
        )
    except (ModelLoadError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    if args.demo:
        print("warning: --demo runs the tiny random model; its answers are meaningless", file=sys.stderr)
    return Engine(model, max_batch_rows=args.max_batch_rows or default_batch_rows(model)).start()


def _start_ray_backend(args: argparse.Namespace) -> RayBackend | int:
    """A pool of Ray actors, each loading the model the flags name; bad flags or an unloadable model exit 2."""
    from naturelm_core.engine import CPU_BATCH_ROWS, GPU_BATCH_ROWS
    from naturelm_core.loading import ModelLoadError

    rows = args.max_batch_rows or (CPU_BATCH_ROWS if args.device == "cpu" else GPU_BATCH_ROWS)
    try:
        from evaluation.ray_backend import ModelSource, RayBackend, RayBackendError
    except ImportError as error:  # Ray is an optional extra
        return _fail(error, EXIT_BAD_INPUT)
    try:
        model = ModelSource(args.model, args.llm, args.device, args.dtype, args.demo)
        backend = RayBackend(model, address=args.ray or None, num_actors=args.ray_actors, max_batch_rows=rows).start()
    except (RayBackendError, ModelLoadError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    if args.demo:
        print("warning: --demo runs the tiny random model; its answers are meaningless", file=sys.stderr)
    actors = backend.live_actors()
    print(f"Ray: {len(actors)} actor(s) on {sorted({a.node_ip for a in actors})}", file=sys.stderr)
    return backend


def _request_stop(cancel: threading.Event, previous_handler: Any) -> None:
    """First Ctrl-C: finish the batch in flight and stop cleanly; a second one interrupts at once."""
    print("\ncancelling after the batch in flight (Ctrl-C again to abort)", file=sys.stderr)
    cancel.set()
    signal.signal(signal.SIGINT, previous_handler)


def _run_with_progress(
    engine: Engine | SweepBackend, spec: SweepSpec, runs_dir: Path | None, cancel: threading.Event
) -> int:
    from tqdm import tqdm

    bar = tqdm(desc=spec.sweep_id, unit="item", dynamic_ncols=True)

    def show(status: SweepStatus) -> None:
        bar.total = status.total
        bar.n = status.done
        bar.refresh()

    try:
        status = run_sweep(engine, spec, runs_dir, cancel=cancel, on_progress=show)
    except RunsStorageError as error:
        return _fail(error, EXIT_STORAGE)
    except (SweepLockedError, DatasetError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    finally:
        bar.close()
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), spec.sweep_id)
    print(f"{spec.sweep_id}: {status.state.value}, {status.done}/{status.total} items -> {folder.results_path}")
    if status.message:
        print(f"{spec.sweep_id}: {status.message}")
    return EXIT_COMPLETE if status.state is SweepState.COMPLETE else EXIT_INCOMPLETE


def _fail(error: Exception, code: int) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
