"""The Sweeps tab's logic that is neither widget wiring nor sweep machinery.

The tab's form fields become a SweepSpec here; the runs folder becomes a table and a progress bar;
a sweep (or an imported folder in the paper's layout) becomes the tab's figures and export files;
a paper experiment (evaluation.presets) or an uploaded fork YAML (evaluation.fork_config) becomes
a spec on the form's data, and a sweep started from a preset gets the paper's own figures.
All of it is a function of what is on disk, so a reloaded page, a second browser and the headless
runner see the same thing.

Uploads live in Gradio's temporary cache, which is cleaned, while a sweep must stay resumable for
weeks: uploaded recordings, labels and mappings are copied to `<runs>/_uploads/<content hash>/`
and paper-layout imports to `<runs>/_imports/<name>-<content hash>/`. The same upload therefore
lands in the same folder, hence gives the same sweep id, so uploading it again resumes the sweep.
Those folders start with "_", which no sweep id does, so list_sweeps never mistakes them for sweeps.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go

from evaluation.datasets import DatasetError, cached_subset_path
from evaluation.export import PROMPT_NAMES_FILE, export_csv, export_json, export_paper_layout, import_paper_folder
from evaluation.fork_config import ForkConfig, read_fork_config
from evaluation.presets import PRESETS, Preset, get_preset, list_presets, preset_of
from evaluation.prompts import PAPER_PROMPTS, Prompt, custom_prompt
from evaluation.reference import FILE_PATTERN, LabelMapping
from evaluation.results import ResultRow
from evaluation.runs import SweepFolder, SweepState, SweepStatus, list_sweeps
from evaluation.scoring import GroupScore, ScoringMode, score_rows
from evaluation.sweep import DataSource, SweepSpec, load_results, load_spec, plan_sweep, planned_label_sets
from evaluation.sweep_plots import (
    CORRECT_FILTERS,
    METRIC_LABELS,
    answers_table,
    error_breakdown_figure,
    metric_vs_alpha_figure,
    metrics_frame,
    overlay_figure,
    tradeoff_figure,
)

UPLOADS_DIR = "_uploads"
IMPORTS_DIR = "_imports"
IMPORT_PREFIX = "import:"
ALL = "(all)"
SPEC_SCORING = "as in the spec"
MAX_SWEEP_ALPHAS = 101
DEFAULT_ALPHA_TEXT = ", ".join(f"{0.1 * i:g}" for i in range(11))
EXPORT_FORMATS = ("csv", "json", "paper")
TABLE_COLUMNS = ["sweep", "name", "state", "done", "total", "progress", "rate", "ETA", "message"]
MAPPING_SUFFIX = "_vernacular_scientific_mapping.jsonl"
PRESET_COLUMNS = [
    "preset",
    "experiment",
    "figures",
    "answers",
    "time",
    "answers at the sample limit",
    "time at the sample limit",
]
PAPER_METRIC = "as in the paper"
RATE_UNKNOWN = "rate unknown until a sweep has run"


class SweepFormError(ValueError):
    """A form field the user has to fix before a sweep can start (the message names the field)."""


# ----------------------------------------------------------------------------------------------
# Form fields -> SweepSpec


def parse_alpha_text(text: str) -> tuple[float, ...]:
    """'0, 0.25, 1' or '0:1:0.1' (start:stop:step, both ends included) or a mix; duplicates dropped, order kept."""
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        values.extend(_alpha_range(part) if ":" in part else [_alpha_number(part)])
    unique = list(dict.fromkeys(round(value, 6) for value in values))
    if not unique:
        raise SweepFormError("the alpha grid is empty; write e.g. 0, 0.5, 1 or 0:1:0.1")
    if len(unique) > MAX_SWEEP_ALPHAS:
        raise SweepFormError(f"{len(unique)} alphas is more than the {MAX_SWEEP_ALPHAS} a sweep allows")
    return tuple(unique)


def _alpha_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SweepFormError(f"alpha {text!r} is not a number; write e.g. 0, 0.5, 1 or 0:1:0.1") from None
    if not math.isfinite(value):
        raise SweepFormError(f"alpha {text!r} is not a finite number")
    return value


def _alpha_range(text: str) -> list[float]:
    pieces = text.split(":")
    if len(pieces) != 3:
        raise SweepFormError(f"{text!r}: a range is start:stop:step, e.g. 0:1:0.1")
    start, stop, step = (_alpha_number(piece.strip()) for piece in pieces)
    if step <= 0 or stop < start:
        raise SweepFormError(f"{text!r}: a range needs start <= stop and a positive step")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_SWEEP_ALPHAS:
        raise SweepFormError(f"{text!r} gives {count} alphas, more than the {MAX_SWEEP_ALPHAS} a sweep allows")
    return [start + i * step for i in range(count)]


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


def _optional_count(value: float | None, field: str) -> int | None:
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


@dataclass(frozen=True)
class SweepForm:
    """The Sweeps tab's fields as the widgets deliver them (uploads are temporary file paths)."""

    name: str
    source: str
    subsets: Sequence[str] = ()
    local_path: str = ""
    labels_csv: str | None = None
    recordings: Sequence[str] = ()
    recordings_name: str = "my-recordings"
    presets: Sequence[str] = ()
    custom_prompts: str = ""
    alphas: str = DEFAULT_ALPHA_TEXT
    limit: float | None = None
    top_k_classes: float | None = None
    seed: float | None = 0
    num_beams: float | None = 2
    max_new_tokens: float | None = 100
    scoring_mode: str = ScoringMode.PAPER.value
    mapping_file: str | None = None


def spec_from_form(form: SweepForm, runs_dir: str | os.PathLike[str]) -> SweepSpec:
    """The spec the form describes; uploads are copied under the runs folder so the sweep can be resumed later."""
    source = _data_source(form.source)
    values: dict[str, Any] = {  # checked before any upload is copied
        "name": (form.name or "").strip() or "sweep",
        "source": source,
        "prompts": parse_prompts(form.presets, form.custom_prompts),
        "alphas": parse_alpha_text(form.alphas),
        "limit": _optional_count(form.limit, "sample limit"),
        "top_k_classes": _optional_count(form.top_k_classes, "top-k classes"),
        "seed": _whole(form.seed, "seed", 0),
        "num_beams": _whole(form.num_beams, "beams", 1),
        "max_new_tokens": _whole(form.max_new_tokens, "max new tokens", 1),
        "scoring_mode": ScoringMode(form.scoring_mode),
    }
    uploads = Path(runs_dir) / UPLOADS_DIR
    if source is DataSource.RECORDINGS:
        if not form.labels_csv:
            raise SweepFormError("upload the labels CSV (columns file,label[,scientific_label])")
        if not form.recordings:
            raise SweepFormError("upload the recordings the labels CSV names")
        folder = persist_uploads([*form.recordings, form.labels_csv], uploads, rename={form.labels_csv: "labels.csv"})
        values.update(path=str(folder), labels_csv=str(folder / "labels.csv"), subsets=(_slug(form.recordings_name),))
    else:
        if not form.subsets:
            raise SweepFormError("choose at least one BEANS-Zero subset")
        values["subsets"] = tuple(form.subsets)
        if source is DataSource.PARQUET:
            values["path"] = _local_parquet(form.local_path)
    if form.mapping_file:
        values["mapping_file"] = _persisted_mapping(form.mapping_file, runs_dir)
    return SweepSpec(**values)


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


def _persisted_mapping(upload: str, runs_dir: str | os.PathLike[str]) -> str:
    return str(persist_uploads([upload], Path(runs_dir) / UPLOADS_DIR) / Path(upload).name)


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


def persist_uploads(paths: Sequence[str], root: Path, rename: dict[str, str] | None = None, prefix: str = "") -> Path:
    """Copy uploaded files into `root/<prefix><hash of names and contents>/` (once) and return that folder."""
    named = [(Path(path), (rename or {}).get(path, Path(path).name)) for path in paths]
    names = [name for _, name in named]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SweepFormError(f"two uploaded files share the name(s) {clashes}; rename one of each")
    digest = hashlib.sha256()
    for path, name in sorted(named, key=lambda pair: pair[1]):
        digest.update(name.encode() + b"\0" + _file_digest(path) + b"\0")
    folder = root / f"{prefix}{digest.hexdigest()[:16]}"
    if not folder.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_ensure(root)))
        for path, name in named:
            shutil.copyfile(path, partial / name)
        try:
            partial.rename(folder)
        except OSError:  # another request copied the same upload first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")[:40].strip("-")
    if not slug:
        raise SweepFormError("give the data set a name (letters or digits)")
    return slug


# ----------------------------------------------------------------------------------------------
# The runs folder as a table and a progress bar


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _running(status: SweepStatus) -> bool:
    return status.state is SweepState.RUNNING


def sweeps_table(statuses: Sequence[SweepStatus]) -> pd.DataFrame:
    """One row per sweep, newest first: state, counts, rate and ETA (the last two only while it runs)."""
    records = [
        {
            "sweep": s.sweep_id,
            "name": s.name,
            "state": s.state.value,
            "done": s.done,
            "total": s.total,
            "progress": f"{100 * s.fraction:.0f}%",
            "rate": f"{s.rate_per_s:.2f}/s" if _running(s) and s.rate_per_s else "-",
            "ETA": format_duration(s.eta_s) if _running(s) else "-",
            "message": s.message,
        }
        for s in statuses
    ]
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)


def progress_html(status: SweepStatus | None) -> str:
    """A progress bar with counts, rate and ETA for the selected sweep (read from its status file)."""
    if status is None:
        return "<p>No sweep selected.</p>"
    detail = f"{status.done}/{status.total} items"
    if _running(status):
        rate = f"{status.rate_per_s:.2f} items/s" if status.rate_per_s else "measuring the rate"
        detail += f", {rate}, ETA {format_duration(status.eta_s)}"
    if status.failed or status.skipped_samples:
        detail += f", {status.failed} failed, {status.skipped_samples} sample(s) skipped"
    message = f"<br><small>{html.escape(status.message)}</small>" if status.message else ""
    return (
        f'<div class="sweep-progress"><b>{html.escape(status.name)}</b> ({html.escape(status.sweep_id)}): '
        f"<b>{status.state.value}</b><br>"
        f'<progress value="{status.done}" max="{max(status.total, 1)}" style="width:100%"></progress>'
        f"{html.escape(detail)}{message}</div>"
    )


def problem_html(message: str) -> str:
    return f"<p><b>{html.escape(message)}</b></p>"


def imported_html(view: SweepView) -> str:
    datasets = sorted({row.dataset for row in view.rows})
    return (
        f"<p>Imported folder <b>{html.escape(view.key.removeprefix(IMPORT_PREFIX))}</b>: "
        f"{len(view.rows)} answers from {html.escape(', '.join(datasets))}</p>"
    )


def sweep_status(
    runs_dir: str | os.PathLike[str], sweep_id: str, statuses: Sequence[SweepStatus] | None = None
) -> SweepStatus | None:
    """The sweep's status as list_sweeps reports it (so a dead process shows as interrupted)."""
    listed = list_sweeps(runs_dir) if statuses is None else statuses
    return next((s for s in listed if s.sweep_id == sweep_id), None)


def view_choices(
    runs_dir: str | os.PathLike[str], statuses: Sequence[SweepStatus] | None = None
) -> list[tuple[str, str]]:
    """(label, key) for every sweep (newest first) and every imported folder: what the tab can show."""
    listed = list_sweeps(runs_dir) if statuses is None else statuses
    choices = [(f"{s.name} · {s.state.value} · {s.sweep_id}", s.sweep_id) for s in listed]
    imports = Path(runs_dir) / IMPORTS_DIR
    if imports.is_dir():
        folders = sorted((p for p in imports.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)
        choices += [(f"imported · {p.name}", IMPORT_PREFIX + p.name) for p in folders]
    return choices


def default_selection(runs_dir: str | os.PathLike[str]) -> str | None:
    """What a freshly loaded page shows: the running sweep, else the newest one."""
    statuses = list_sweeps(runs_dir)
    running = next((s for s in statuses if _running(s)), None)
    chosen = running or (statuses[0] if statuses else None)
    return chosen.sweep_id if chosen else None


# ----------------------------------------------------------------------------------------------
# A sweep or an imported folder, scored


@dataclass(frozen=True)
class SweepView:
    """What the figures and exports of one sweep (or imported folder) are computed from."""

    key: str
    rows: list[ResultRow]
    scores: list[GroupScore]
    mapping: LabelMapping | None
    spec: dict[str, Any] | None


class SweepViews:
    """Loads and scores views, again only when their results file has changed (the page polls every ~2 s)."""

    def __init__(self, runs_dir: str | os.PathLike[str]) -> None:
        self.runs_dir = Path(runs_dir)
        self._cache: dict[tuple[str, str], tuple[tuple, SweepView]] = {}
        self._lock = threading.Lock()

    def signature(self, key: str) -> tuple:
        """Changes whenever the view's data does: results size and time, and the spec's (scoring options)."""
        if key.startswith(IMPORT_PREFIX):
            folder = self._import_folder(key)
            return (key, folder.stat().st_mtime_ns)
        folder = SweepFolder(self.runs_dir, key)
        if not folder.exists():
            raise SweepFormError(f"no sweep {key!r} in {self.runs_dir}")
        return (key, _stat(folder.results_path), _stat(folder.spec_path))

    def load(self, key: str, mode: str = SPEC_SCORING) -> SweepView:
        if not key:
            raise SweepFormError("select a sweep first")
        signature = self.signature(key)
        with self._lock:
            cached = self._cache.get((key, mode))
            if cached is not None and cached[0] == signature:
                return cached[1]
        view = self._import_view(key, mode) if key.startswith(IMPORT_PREFIX) else self._sweep_view(key, mode)
        with self._lock:
            self._cache[(key, mode)] = (signature, view)
        return view

    def _sweep_view(self, key: str, mode: str) -> SweepView:
        spec = load_spec(self.runs_dir, key)
        rows = load_results(self.runs_dir, key)
        mapping = spec.label_mapping()
        scoring = spec.scoring_mode if mode == SPEC_SCORING else ScoringMode(mode)
        scores = score_rows(rows, scoring, mapping=mapping, label_sets=planned_label_sets(spec))
        return SweepView(key, rows, scores, mapping, spec.to_dict())

    def _import_view(self, key: str, mode: str) -> SweepView:
        imported = import_paper_folder(self._import_folder(key))
        scoring = ScoringMode.PAPER if mode == SPEC_SCORING else ScoringMode(mode)
        scores = score_rows(imported.rows, scoring, mapping=imported.mapping)
        return SweepView(key, imported.rows, scores, imported.mapping, None)

    def _import_folder(self, key: str) -> Path:
        name = key.removeprefix(IMPORT_PREFIX)
        folder = self.runs_dir / IMPORTS_DIR / name
        if "/" in name or name.startswith(".") or not folder.is_dir():
            raise SweepFormError(f"no imported folder {name!r} in {self.runs_dir / IMPORTS_DIR}")
        return folder


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_size, info.st_mtime_ns)


class SweepFigures(NamedTuple):
    accuracy: go.Figure
    f1: go.Figure
    tradeoff: go.Figure
    breakdown: go.Figure
    answers: pd.DataFrame


def filter_choices(view: SweepView) -> tuple[list[str], list[str]]:
    """The dataset and prompt filter options of a view, each led by ALL."""
    datasets = sorted({score.dataset for score in view.scores})
    prompts = sorted({score.prompt_name for score in view.scores})
    return [ALL, *datasets], [ALL, *prompts]


def view_figures(view: SweepView, dataset: str = ALL, prompt: str = ALL, correct: str = ALL) -> SweepFigures:
    """The tab's figures; filters not present in this view (left over from another sweep) fall back to all."""
    datasets, prompts = filter_choices(view)
    chosen_dataset = dataset if dataset in datasets[1:] else None
    chosen_prompt = prompt if prompt in prompts[1:] else None
    frame = metrics_frame(view.scores)
    return SweepFigures(
        accuracy=metric_vs_alpha_figure(frame, "accuracy"),
        f1=metric_vs_alpha_figure(frame, "f1_weighted"),
        tradeoff=tradeoff_figure(frame),
        breakdown=error_breakdown_figure(frame, *_breakdown_pair(frame, chosen_dataset, chosen_prompt)),
        answers=answers_table(
            view.scores,
            dataset=chosen_dataset,
            prompt=chosen_prompt,
            correct=correct if correct in CORRECT_FILTERS else None,
        ),
    )


def _breakdown_pair(frame: pd.DataFrame, dataset: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    """The error breakdown shows one (dataset, prompt): the filtered one, else the first that has answers."""
    rows = frame if dataset is None else frame[frame["dataset"] == dataset]
    if prompt is not None and (rows["prompt"] == prompt).any():
        rows = rows[rows["prompt"] == prompt]
    if rows.empty:
        return None, None
    first = rows.sort_values(["dataset", "prompt"]).iloc[0]
    return str(first["dataset"]), str(first["prompt"])


def overlay(views: Sequence[SweepView], metric: str = "accuracy") -> go.Figure:
    if len({view.key for view in views}) != len(views):
        raise SweepFormError("choose two different sweeps to compare")
    return overlay_figure({_short(view.key): metrics_frame(view.scores) for view in views}, metric)


def _short(key: str) -> str:
    return key.removeprefix(IMPORT_PREFIX)


# ----------------------------------------------------------------------------------------------
# Export and import


def export_view(view: SweepView, fmt: str, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the view as CSV, JSON or the paper's jsonl layout (zipped) into a fresh temporary folder."""
    if fmt not in EXPORT_FORMATS:
        raise SweepFormError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if not view.rows:
        raise SweepFormError(f"{_short(view.key)} has no results yet")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="naturelm-export-"))
    stem = _short(view.key)
    if fmt == "csv":
        return export_csv(view.rows, folder / f"{stem}.csv", view.scores)
    if fmt == "json":
        return export_json(view.rows, folder / f"{stem}.json", view.scores, view.spec)
    layout = folder / stem
    export_paper_layout(view.rows, layout, view.mapping)
    archive = folder / f"{stem}-paper-layout.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(layout.iterdir()):
            bundle.write(path, f"{stem}/{path.name}")
    return archive


def import_paper_uploads(paths: Sequence[str], runs_dir: str | os.PathLike[str], name: str = "imported") -> str:
    """Keep uploaded paper-layout files (jsonl files, or zips of them) under the runs folder; return the view key.

    Files other than results, prompt_names.json and label mappings are ignored; zip members are
    taken by their base names only, so an archive cannot write outside the import folder.
    """
    if not paths:
        raise SweepFormError("upload the beans_zero_eval_*.jsonl files (or a zip of them) first")
    staging = Path(tempfile.mkdtemp(prefix="naturelm-import-"))
    try:
        for path in map(Path, paths):
            if path.suffix.lower() == ".zip":
                _extract_flat(path, staging)
            elif _wanted(path.name):
                shutil.copyfile(path, staging / path.name)
        if not any(FILE_PATTERN.match(p.name) for p in staging.iterdir()):
            raise SweepFormError("none of the uploads is named beans_zero_eval_{dataset}_query{q}_lora{NNN}.jsonl")
        import_paper_folder(staging)  # a malformed file fails here, before it is kept
        kept = sorted(str(p) for p in staging.iterdir())
        folder = persist_uploads(kept, Path(runs_dir) / IMPORTS_DIR, prefix=f"{_slug(name)}-")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return IMPORT_PREFIX + folder.name


def _wanted(name: str) -> bool:
    return bool(FILE_PATTERN.match(name)) or name == PROMPT_NAMES_FILE or name.endswith(MAPPING_SUFFIX)


def _extract_flat(archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = Path(member.filename).name
                if not member.is_dir() and _wanted(name):
                    (folder / name).write_bytes(bundle.read(member))
    except zipfile.BadZipFile as error:
        raise SweepFormError(f"{archive.name} is not a readable zip file: {error}") from None


# ----------------------------------------------------------------------------------------------
# The paper's experiments (presets) and the fork's YAML configs


@dataclass(frozen=True)
class MeasuredRate:
    """Answers per second as a sweep on this runs folder measured them, and which sweep that was."""

    answers_per_s: float
    sweep_id: str


def measured_rate(statuses: Sequence[SweepStatus]) -> MeasuredRate | None:
    """The rate of the sweep that ran last (the running one updates its status most recently).

    The engine counts rows but not the time it spent on them, while every sweep's status records
    its answers per second over its session: the best estimate of what a preset costs on this model,
    hardware and decoding settings. None until some sweep has answered something.
    """
    measured = [s for s in statuses if s.rate_per_s and s.rate_per_s > 0 and s.done > 0]
    if not measured:
        return None
    latest = max(measured, key=lambda s: s.updated_at or s.finished_at or s.created_at or 0.0)
    return MeasuredRate(float(latest.rate_per_s), latest.sweep_id)


def rate_markdown(rate: MeasuredRate | None) -> str:
    if rate is None:
        return f"Estimated times: {RATE_UNKNOWN}."
    return (
        f"Estimated times at **{rate.answers_per_s:.2f} answers/s**, the rate sweep `{rate.sweep_id}` measured "
        "(beams, answer length and in-context recordings change it)."
    )


def _duration_cell(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(seconds)


def presets_table(rate: MeasuredRate | None, limit: float | None = None) -> pd.DataFrame:
    """One row per preset: the answers of the full experiment on BEANS-Zero and at the form's sample limit,
    and how long each takes at the measured rate."""
    cap = _optional_count(limit, "sample limit")
    per_s = rate.answers_per_s if rate is not None else None
    full, capped = list_presets(per_s), list_presets(per_s, cap)
    records = [
        {
            "preset": whole["key"],
            "experiment": whole["title"],
            "figures": whole["figures"],
            "answers": whole["answers"],
            "time": _duration_cell(whole["duration_s"]),
            "answers at the sample limit": part["answers"],
            "time at the sample limit": _duration_cell(part["duration_s"]),
        }
        for whole, part in zip(full, capped, strict=True)
    ]
    return pd.DataFrame.from_records(records, columns=PRESET_COLUMNS)


def preset_choices() -> list[tuple[str, str]]:
    return [(f"{preset.title} ({preset.figures_label})", key) for key, preset in PRESETS.items()]


def preset_markdown(key: str | None, rate: MeasuredRate | None, limit: float | None = None) -> str:
    """What the chosen preset asks and costs, with its caveats (a mapping it needs, answers that take longer)."""
    if not key:
        return ""
    cap = _optional_count(limit, "sample limit")
    entry = get_preset(key).summary(rate.answers_per_s if rate is not None else None, cap)
    alphas = ", ".join(f"{alpha:g}" for alpha in entry["alphas"])
    samples = "all of BEANS-Zero" if cap is None else f"at most {cap} samples per data set"
    duration = RATE_UNKNOWN if rate is None else f"about {format_duration(entry['duration_s'])}"
    lines = [
        f"**{html.escape(entry['title'])}** ({entry['figures']}): {html.escape(entry['description'])}",
        f"- data sets: {', '.join(entry['subsets'])}; prompts: {', '.join(entry['prompts'])}; alphas: {alphas}",
        f"- {entry['answers']} answers ({samples}): {duration}",
        *(f"- {html.escape(note)}" for note in entry["notes"]),
    ]
    return "\n".join(lines)


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

    `alphas` empty keeps the preset's own grid (the paper's); anything else replaces it.
    """
    if not key:
        raise SweepFormError("choose a paper experiment first")
    preset = get_preset(key)
    source, path = _beans_zero_data(form, "a paper experiment")
    options: dict[str, Any] = {  # checked before the mapping upload is copied
        "source": source,
        "path": path,
        "limit": _optional_count(form.limit, "sample limit"),
        "seed": _whole(form.seed, "seed", 0),
        "num_beams": _whole(form.num_beams, "beams", 1),
        "max_new_tokens": _whole(form.max_new_tokens, "max new tokens", 1),
        "scoring_mode": ScoringMode(form.scoring_mode),
        "alphas": parse_alpha_text(alphas) if (alphas or "").strip() else None,
    }
    preset.spec(**options)  # a bad alpha fails here, before anything is copied
    mapping = _persisted_mapping(form.mapping_file, runs_dir) if form.mapping_file else None
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
        limit=_optional_count(form.limit, "sample limit"),
        seed=_whole(form.seed, "seed", 0),
        scoring_mode=form.scoring_mode,
        mapping_file=mapping_file,
    )


def spec_from_fork_upload(upload: str | None, form: SweepForm, runs_dir: str | os.PathLike[str]) -> ForkConfig:
    """As fork_config_from_upload, with the mapping upload kept under the runs folder so the sweep can resume."""
    config = fork_config_from_upload(upload, form)  # checked before the mapping upload is copied
    if not form.mapping_file:
        return config
    mapping = _persisted_mapping(form.mapping_file, runs_dir)
    return replace(config, spec=replace(config.spec, mapping_file=mapping))


def fork_config_markdown(config: ForkConfig) -> str:
    """What the config will run, and what it says that changes nothing (its notes)."""
    spec = config.spec
    classes = (
        f"species {', '.join(s.name for s in spec.species)}"
        if spec.species
        else f"the {spec.top_k_classes} most frequent classes"
        if spec.top_k_classes
        else "all classes"
    )
    samples = "all samples" if spec.limit is None else f"at most {spec.limit} samples"
    lines = [
        f"**{html.escape(spec.name)}**: {', '.join(spec.subsets)} ({classes}, {samples} per data set)",
        f"- {len(spec.prompts)} quer{'y' if len(spec.prompts) == 1 else 'ies'} "
        f"({', '.join(p.name for p in spec.prompts)}) at alpha {', '.join(f'{a:g}' for a in spec.alphas)}",
        f"- {spec.num_beams} beam(s), at most {spec.max_new_tokens} new tokens; scored as {spec.scoring_mode.value}",
        *(f"- note: {html.escape(note)}" for note in config.notes),
    ]
    return "\n".join(lines)


def preset_figures(view: SweepView, metric: str = PAPER_METRIC) -> tuple[Preset | None, list[tuple[str, go.Figure]]]:
    """The paper's figures of a sweep started from a preset (same questions), in `metric` or the paper's own."""
    if metric != PAPER_METRIC and metric not in METRIC_LABELS:
        raise SweepFormError(f"unknown metric {metric!r}; choose one of {[PAPER_METRIC, *METRIC_LABELS]}")
    preset = preset_of(SweepSpec.from_dict(view.spec)) if view.spec is not None else None
    if preset is None:
        return None, []
    return preset, preset.make_figures(view.scores, None if metric == PAPER_METRIC else metric)
