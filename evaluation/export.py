"""A sweep's results out of the app (CSV, JSON, the paper's jsonl layout) and the paper's layout back in.

The paper's layout is what its own plotting scripts read, so a sweep exported here can be checked
with them, and a folder they produced can be imported and shown with our figures. That layout has
no prompt names, only query numbers, so the export leaves `prompt_names.json` beside the files and
the import uses it when present: a round trip gives back the same rows and hence the same figures.

Rows merged by a recipe keep its name in `alpha` and its JSON object in a `recipe` column (CSV, a
JSON string) or key (JSON). The paper's layout names files by round(100 * alpha), so it holds the
plain alphas only: recipe rows have no file name there and are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.reference import LabelMapping, find_mapping_beside, read_reference_folder, write_reference_folder
from evaluation.results import ResultRow, grid_order
from evaluation.score import summary_json
from evaluation.scoring import GroupScore

PROMPT_NAMES_FILE = "prompt_names.json"
MAPPING_FILE_PATTERN = "{dataset}_vernacular_scientific_mapping.jsonl"
RESULT_COLUMNS = ["dataset", "id", "prompt_name", "prompt", "alpha", "label", "prediction"]
SCORE_COLUMNS = ["scored_label", "scored_as", "outcome", "tied_labels"]
DISTRIBUTION_COLUMN = "label_log_likelihoods"  # a likelihood sweep's row distribution (evaluation.sweep.label_sets)
TIED_LABELS_SEPARATOR = " | "  # labels hold commas ("Fin, Finback Whale"), never this


def results_frame(rows: Sequence[ResultRow], scores: Sequence[GroupScore] = ()) -> pd.DataFrame:
    """One row per answer; with scores, also the label it was scored as, its outcome, and the equally near
    labels it was chosen among ("tied_labels", empty when one label was nearest): the answers another tie
    order of the evaluator would score differently.
    """
    recipes = any(row.recipe is not None for row in rows)
    columns = [*RESULT_COLUMNS, "recipe"] if recipes else RESULT_COLUMNS
    frame = pd.DataFrame.from_records([_flat(row) for row in rows], columns=columns)
    if scores:
        scored = pd.DataFrame.from_records(
            [
                {
                    "dataset": score.dataset,
                    "prompt_name": score.prompt_name,
                    "alpha": score.alpha,
                    "id": answer.id,
                    "scored_label": answer.label,
                    "scored_as": answer.predicted,
                    "outcome": answer.outcome.value,
                    "tied_labels": TIED_LABELS_SEPARATOR.join(answer.tied),
                }
                for score in scores
                for answer in score.answers
            ],
            columns=["dataset", "prompt_name", "alpha", "id", *SCORE_COLUMNS],
        )
        frame = frame.merge(scored, on=["dataset", "prompt_name", "alpha", "id"], how="left")
    order = frame["alpha"].map(grid_order)
    frame = frame.assign(_order=order).sort_values(["dataset", "prompt_name", "_order", "id"], ignore_index=True)
    return frame.drop(columns="_order")


def _flat(row: ResultRow) -> dict[str, Any]:
    """A row as CSV cells: its recipe (if any) as one JSON string."""
    data = row.to_dict()
    if "recipe" in data:
        data["recipe"] = json.dumps(data["recipe"], sort_keys=True)
    return data


def export_csv(
    rows: Sequence[ResultRow],
    path: str | os.PathLike[str],
    scores: Sequence[GroupScore] = (),
    distributions: Mapping[tuple, list[float]] | None = None,
) -> Path:
    """With a likelihood sweep's `distributions` ((dataset, prompt_name, alpha, id) -> log-likelihoods in its
    label_sets.json order), a `label_log_likelihoods` column holds each row's as JSON text."""
    path = Path(path)
    frame = results_frame(rows, scores)
    if distributions:
        keys = zip(frame["dataset"], frame["prompt_name"], frame["alpha"], frame["id"], strict=True)
        frame[DISTRIBUTION_COLUMN] = [
            json.dumps(distributions.get(key)) if key in distributions else "" for key in keys
        ]
    frame.to_csv(path, index=False)
    return path


def export_json(
    rows: Sequence[ResultRow],
    path: str | os.PathLike[str],
    scores: Sequence[GroupScore] = (),
    spec: dict[str, Any] | None = None,
    label_sets: Mapping[str, list[str]] | None = None,
    distributions: Mapping[tuple, list[float]] | None = None,
    provenance: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """{"spec", "metrics", "results"}; "metrics" is evaluation.score's --json: dataset -> prompt -> alpha -> the
    headline numbers, BEANS-Zero's own ("official") and the tie sensitivity ("ties") of each group.
    A likelihood sweep adds "label_sets" (subset -> label order) and each result's `label_log_likelihoods`;
    a sweep with run records adds them as "provenance" (evaluation.sweep.provenance: model, numerics, code).
    """
    path = Path(path)
    distributions = distributions or {}
    results = [{**row.to_dict(), **_distribution(row, distributions)} for row in rows]
    document = {"spec": spec, "metrics": summary_json(scores), "results": results}
    if label_sets:
        document["label_sets"] = dict(label_sets)
    if provenance:
        document["provenance"] = [dict(run) for run in provenance]
    path.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def _distribution(row: ResultRow, distributions: Mapping[tuple, list[float]]) -> dict[str, Any]:
    key = (row.dataset, row.prompt_name, row.alpha, row.id)
    return {DISTRIBUTION_COLUMN: distributions[key]} if key in distributions else {}


def export_paper_layout(
    rows: Sequence[ResultRow],
    folder: str | os.PathLike[str],
    mapping: LabelMapping | None = None,
) -> dict[str, int]:
    """Write one jsonl per (dataset, query, alpha), prompt_names.json, and the label mapping per dataset.

    Returns the prompt-name -> query-number map. Alphas must be multiples of 0.01 (the file names
    hold round(100 * alpha)); rows of merge recipes are left out (the layout has no name for them).
    """
    folder = Path(folder)
    rows = [row for row in rows if row.recipe is None]
    queries = write_reference_folder(rows, folder)
    names = {str(query): name for name, query in queries.items()}
    (folder / PROMPT_NAMES_FILE).write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")
    if mapping is not None:
        for dataset in sorted({row.dataset for row in rows}):
            _write_mapping(mapping, folder / MAPPING_FILE_PATTERN.format(dataset=dataset))
    return queries


def _write_mapping(mapping: LabelMapping, path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for label, scientific in sorted(mapping.scientific.items()):
            record: dict[str, Any] = {"label": label, "scientific_name": scientific}
            if mapping.synonyms.get(label):
                record["synonyms"] = list(mapping.synonyms[label])
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class ImportedRun:
    """Rows read from a folder in the paper's layout, and the label mapping found beside them."""

    rows: list[ResultRow]
    mapping: LabelMapping | None


def import_paper_folder(folder: str | os.PathLike[str]) -> ImportedRun:
    """Read every beans_zero_eval_*.jsonl of `folder`; prompt names come from prompt_names.json if present."""
    folder = Path(folder)
    rows = read_reference_folder(folder)
    names_file = folder / PROMPT_NAMES_FILE
    if names_file.is_file():
        names = json.loads(names_file.read_text(encoding="utf-8"))
        rows = [replace(row, prompt_name=names.get(row.prompt_name, row.prompt_name)) for row in rows]
    return ImportedRun(rows, find_mapping_beside(folder, {row.dataset for row in rows}))
