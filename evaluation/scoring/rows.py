"""Scoring whole results: every (dataset, prompt, alpha) group of a results file or a released folder.

The one scoring module that reads result rows (evaluation.results) and tasks (evaluation.datasets): it
groups the rows, hands each group to classification or detection, warns where scientific answers meet
labels no mapping turned scientific, and returns one GroupScore per group, in grid order.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from evaluation.datasets import task_of
from evaluation.prompts import PromptKind, detect_prompt_kind
from evaluation.reference import LabelMapping
from evaluation.results import GridKey, ResultRow, grid_order
from evaluation.scoring.classification import score_classification
from evaluation.scoring.detection import score_detection
from evaluation.scoring.metrics import Metrics
from evaluation.scoring.modes import ScoredAnswer, ScoringMode


class MissingMappingWarning(UserWarning):
    """Scientific or combined answers scored against the labels as they are, for want of a mapping."""


class RawLabelsWarning(UserWarning):
    """Scientific or combined answers scored officially: against the raw labels, as BEANS-Zero never maps."""


@dataclass(frozen=True)
class GroupScore:
    dataset: str
    prompt_name: str
    alpha: GridKey  # a float alpha, or a merge recipe's name
    kind: PromptKind
    mode: ScoringMode
    task: str
    answers: list[ScoredAnswer]
    metrics: Metrics


def score_rows(
    rows: Iterable[ResultRow],
    mode: ScoringMode | str,
    mapping: LabelMapping | None = None,
    label_sets: Mapping[str, Iterable[str]] | None = None,
) -> list[GroupScore]:
    """Score every (dataset, prompt, alpha) group of a results file or a released folder.

    A dataset's label set is the union of its labels over all groups (so a partial sweep still snaps
    to the same labels everywhere) unless `label_sets` gives it. Captioning groups are skipped. The
    mapping serves paper and robust scoring; official scoring never maps, so it neither needs nor uses one.
    """
    mode = ScoringMode(mode)
    groups: dict[tuple[str, str, GridKey], list[ResultRow]] = defaultdict(list)
    labels_seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        groups[(row.dataset, row.prompt_name, row.alpha)].append(row)
        labels_seen[row.dataset].add(row.label)
    scores = []
    for (dataset, prompt_name, alpha), group in sorted(groups.items(), key=_group_order):
        task = task_of(dataset)
        if task == "captioning":
            continue
        label_set = set(labels_seen[dataset]) | set((label_sets or {}).get(dataset, ()))
        ids = [row.id for row in group]
        predictions = [row.prediction for row in group]
        labels = [row.label for row in group]
        kind = detect_prompt_kind(group[0].prompt)
        if task == "detection":
            answers, metrics = score_detection(ids, predictions, labels, mode=mode, label_set=label_set)
        else:
            if kind is not PromptKind.COMMON and (mode is ScoringMode.OFFICIAL or mapping is None):
                _warn_unmapped(f"{dataset} prompt {prompt_name!r} asks for {kind} names", mode)
            answers, metrics = score_classification(
                ids,
                predictions,
                labels,
                dataset=dataset,
                kind=kind,
                mode=mode,
                label_set=label_set,
                mapping=mapping if kind is not PromptKind.COMMON else None,
            )
        scores.append(GroupScore(dataset, prompt_name, alpha, kind, mode, task, answers, metrics))
    return scores


def _group_order(item: tuple[tuple[str, str, GridKey], list[ResultRow]]) -> tuple:
    """Groups by dataset, prompt, then grid point: plain alphas by value, then merge recipes by name."""
    (dataset, prompt_name, key), _ = item
    return (dataset, prompt_name, grid_order(key))


def _warn_unmapped(asks: str, mode: ScoringMode) -> None:
    """Say that scientific or combined answers meet the raw labels: by design if official, else for want of a
    mapping (the CLI prints these; a near-zero official score for scientific answers is no bug)."""
    if mode is ScoringMode.OFFICIAL:
        message = "official scoring, as BEANS-Zero, applies no label mapping and compares them with the raw labels"
        warnings.warn(
            f"{asks}: {message} (paper mode scores them against mapped labels)", RawLabelsWarning, stacklevel=3
        )
    else:
        message = "but no label mapping was given: its answers are compared with the labels as they are"
        warnings.warn(f"{asks} {message}", MissingMappingWarning, stacklevel=3)
