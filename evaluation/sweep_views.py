"""A sweep, or an imported folder in the paper's layout, read and scored: what its figures and exports come from.

Why a cache: the Sweeps page polls every ~2 s, while scoring a large results file takes seconds.
A view is scored again only when its results file or spec changed (size and mtime), per scoring
mode. Everything comes from disk, so a reloaded page, a second browser and the headless runner
see the same numbers.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.export import export_csv, export_json, export_paper_layout, import_paper_folder
from evaluation.likelihood_metrics import Distributions, group_distributions
from evaluation.reference import LabelMapping
from evaluation.results import GridKey, ResultRow
from evaluation.scoring import GroupScore, ScoringMode, score_rows
from evaluation.sweep import (
    DISTRIBUTION_FIELD,
    AnswerMode,
    SweepFolder,
    load_results,
    load_spec,
    planned_label_sets,
    read_label_sets,
)
from evaluation.sweep.provenance import PROVENANCE_FILE, read_runs, write_runs
from evaluation.sweep_uploads import IMPORT_PREFIX, IMPORTS_DIR

EXPORT_FORMATS = ("csv", "json", "paper")


class ViewError(ValueError):
    """A sweep or import that cannot be shown or exported (not there, nothing yet); the message says which."""


@dataclass(frozen=True)
class SweepView:
    """What the figures and exports of one sweep (or imported folder) are computed from."""

    key: str
    rows: list[ResultRow]
    scores: list[GroupScore]
    mapping: LabelMapping | None
    spec: dict[str, Any] | None
    # A likelihood sweep's label order per subset and each row's stored log-likelihoods, keyed by
    # (dataset, prompt_name, alpha, id); empty for generation sweeps and imports.
    label_sets: dict[str, list[str]] = field(default_factory=dict)
    distributions: dict[tuple[str, str, GridKey, str], list[float]] = field(default_factory=dict)
    # Each run's model, numerics and code (evaluation.sweep.provenance), oldest first; an import keeps its export's.
    provenance: tuple[dict[str, Any], ...] = ()

    @property
    def is_likelihood(self) -> bool:
        return bool(self.distributions)

    def distribution_groups(self) -> dict[tuple[str, str, GridKey], Distributions]:
        """The stored distributions per (dataset, prompt, grid point), for evaluation.likelihood_metrics."""
        records = [
            {
                "dataset": row.dataset,
                "prompt_name": row.prompt_name,
                "alpha": row.alpha,
                "label": row.label,
                DISTRIBUTION_FIELD: self.distributions[(row.dataset, row.prompt_name, row.alpha, row.id)],
            }
            for row in self.rows
            if (row.dataset, row.prompt_name, row.alpha, row.id) in self.distributions
        ]
        return group_distributions(records, self.label_sets)

    @property
    def short_key(self) -> str:
        """The key without the import prefix: how legends and file names call it."""
        return self.key.removeprefix(IMPORT_PREFIX)


class SweepViews:
    """Loads and scores views, again only when their results file has changed (the page polls every ~2 s)."""

    def __init__(self, runs_dir: str | os.PathLike[str]) -> None:
        self.runs_dir = Path(runs_dir)
        self._cache: dict[tuple[str, ScoringMode | None], tuple[tuple, SweepView]] = {}
        self._lock = threading.Lock()

    def signature(self, key: str) -> tuple:
        """Changes whenever the view's data does: results size and time, the spec's (scoring options), and the
        run records' (a resume records itself before it writes a row)."""
        if key.startswith(IMPORT_PREFIX):
            folder = self._import_folder(key)
            return (key, folder.stat().st_mtime_ns)
        folder = SweepFolder(self.runs_dir, key)
        if not folder.exists():
            raise ViewError(f"no sweep {key!r} in {self.runs_dir}")
        return (key, _stat(folder.results_path), _stat(folder.spec_path), _stat(folder.path / PROVENANCE_FILE))

    def load(self, key: str, mode: ScoringMode | None = None) -> SweepView:
        """The view scored in `mode`; None scores a sweep as its spec says and an import as the paper did."""
        if not key:
            raise ViewError("select a sweep first")
        signature = self.signature(key)
        with self._lock:
            cached = self._cache.get((key, mode))
            if cached is not None and cached[0] == signature:
                return cached[1]
        view = self._import_view(key, mode) if key.startswith(IMPORT_PREFIX) else self._sweep_view(key, mode)
        with self._lock:
            self._cache[(key, mode)] = (signature, view)
        return view

    def provenance(self, key: str) -> tuple[dict[str, Any], ...]:
        """The run records of a sweep, or those an imported export carried: read alone, without scoring, as the
        page shows them on every refresh."""
        folder = self._import_folder(key) if key.startswith(IMPORT_PREFIX) else SweepFolder(self.runs_dir, key).path
        return tuple(read_runs(folder))

    def generation_twin(self, key: str) -> str | None:
        """The generation sweep asking what likelihood sweep `key` asks (same data, prompts, grid and decoding,
        whatever its name), if one is in the runs folder: the "says" beside this sweep's "knows"."""
        if key.startswith(IMPORT_PREFIX):
            return None
        spec = load_spec(self.runs_dir, key)
        if spec.answer_mode is not AnswerMode.LIKELIHOOD:
            return None
        digest = dataclasses.replace(spec, answer_mode=AnswerMode.GENERATE, saved_as=None).sweep_id.rsplit("-", 1)[1]
        twins = sorted(p.name for p in self.runs_dir.glob(f"*-{digest}") if SweepFolder(self.runs_dir, p.name).exists())
        return twins[0] if twins else None

    def _sweep_view(self, key: str, mode: ScoringMode | None) -> SweepView:
        spec = load_spec(self.runs_dir, key)
        rows = load_results(self.runs_dir, key)
        mapping = spec.label_mapping()
        scores = score_rows(rows, mode or spec.scoring_mode, mapping=mapping, label_sets=planned_label_sets(spec))
        folder = SweepFolder(self.runs_dir, key)
        label_sets = read_label_sets(folder.path)
        distributions = {
            (r["dataset"], r["prompt_name"], r["alpha"], r["id"]): r[DISTRIBUTION_FIELD]
            for r in (folder.results.read() if label_sets else ())
            if DISTRIBUTION_FIELD in r
        }
        runs = self.provenance(key)
        return SweepView(key, rows, scores, mapping, spec.to_dict(), label_sets, distributions, runs)

    def _import_view(self, key: str, mode: ScoringMode | None) -> SweepView:
        imported = import_paper_folder(self._import_folder(key))
        scores = score_rows(imported.rows, mode or ScoringMode.PAPER, mapping=imported.mapping)
        return SweepView(key, imported.rows, scores, imported.mapping, None, provenance=self.provenance(key))

    def _import_folder(self, key: str) -> Path:
        name = key.removeprefix(IMPORT_PREFIX)
        folder = self.runs_dir / IMPORTS_DIR / name
        if "/" in name or name.startswith(".") or not folder.is_dir():
            raise ViewError(f"no imported folder {name!r} in {self.runs_dir / IMPORTS_DIR}")
        return folder


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_size, info.st_mtime_ns)


def export_view(view: SweepView, fmt: str, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the view as CSV, JSON or the paper's jsonl layout (zipped) into a fresh temporary folder.

    JSON and the zipped layout carry the sweep's run records (a "provenance" list; provenance.jsonl beside the
    jsonl files, which an import keeps), so exported numbers say which model and numerics produced them; a CSV
    is one table of answers and has no place for them.
    """
    if fmt not in EXPORT_FORMATS:
        raise ViewError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if not view.rows:
        raise ViewError(f"{view.short_key} has no results yet")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="naturelm-export-"))
    stem = view.short_key
    if fmt == "csv":
        return export_csv(view.rows, folder / f"{stem}.csv", view.scores, view.distributions)
    if fmt == "json":
        return export_json(
            view.rows,
            folder / f"{stem}.json",
            view.scores,
            view.spec,
            view.label_sets,
            view.distributions,
            view.provenance,
        )
    if all(row.recipe is not None for row in view.rows):
        raise ViewError(f"{view.short_key} has merge recipes only; the paper's layout holds plain alphas")
    layout = folder / stem
    export_paper_layout(view.rows, layout, view.mapping)
    if view.provenance:
        write_runs(layout / PROVENANCE_FILE, view.provenance)
    archive = folder / f"{stem}-paper-layout.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(layout.iterdir()):
            bundle.write(path, f"{stem}/{path.name}")
    return archive
