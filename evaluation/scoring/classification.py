"""Scoring one group of classification answers (one dataset, prompt and alpha) in any of the three modes.

Official and paper modes snap to the nearest label (snap) and report tie ranges; the robust mode matches
names through AliasIndex (aliases), with the label mapping's scientific names where the prompt asked for
them, and reads counts for One/More label sets. Imports the lower scoring modules, evaluation.prompts and
evaluation.reference; never detection or rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from evaluation.prompts import PromptKind
from evaluation.reference import LabelMapping, MappingError
from evaluation.scoring.aliases import AliasIndex, common_name_aliases, scientific_name_tolerance
from evaluation.scoring.answer_text import count_class, is_abstention, normalise
from evaluation.scoring.metrics import (
    HEADLINE_METRICS,
    LabelCodes,
    Metrics,
    _comma_parts,
    classification_metrics,
    official_classification,
    top1_hits,
)
from evaluation.scoring.modes import (
    PAPER_OUT_OF_SET,
    ROBUST_ABSTENTION,
    ROBUST_OUT_OF_SET,
    Outcome,
    ScoredAnswer,
    ScoringError,
    ScoringMode,
)
from evaluation.scoring.snap import Snap, snap_official, snap_paper, tie_sensitivity


def _outcome(label: str, predicted: str) -> Outcome:
    if predicted == label:
        return Outcome.CORRECT
    if predicted == ROBUST_ABSTENTION:
        return Outcome.ABSTENTION
    if predicted in (PAPER_OUT_OF_SET, ROBUST_OUT_OF_SET):
        return Outcome.OUT_OF_SET
    return Outcome.IN_SET_CONFUSION


def paper_target(label: str, kind: PromptKind, mapping: LabelMapping | None) -> str:
    """The label as the paper scores it: the common name, the mapped scientific name, or "<sci> : <common>"."""
    if mapping is None or kind is PromptKind.COMMON:
        return label
    scientific = mapping.scientific_name(label)
    return scientific if kind is PromptKind.SCIENTIFIC else f"{scientific} : {label}"


def score_classification(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    dataset: str,
    kind: PromptKind,
    mode: ScoringMode,
    label_set: Iterable[str],
    mapping: LabelMapping | None = None,
) -> tuple[list[ScoredAnswer], Metrics]:
    """Score one group of classification answers; `label_set` holds the raw labels as in the data.

    Official scoring snaps to those raw labels whatever the prompt asked for, as BEANS-Zero never maps:
    `kind` and `mapping` shape the paper and robust modes only.
    """
    if not (len(ids) == len(predictions) == len(labels)):
        raise ScoringError("ids, predictions and labels must have the same length")
    label_set = sorted(set(label_set) | set(labels))
    if mode is ScoringMode.OFFICIAL:
        return _score_snapped(ids, predictions, labels, snap_official(predictions, label_set), official=True)
    if mapping is not None and kind is not PromptKind.COMMON and mapping.missing(label_set):
        raise MappingError(f"{dataset}: the label mapping lacks {mapping.missing(label_set)}")
    if mode is ScoringMode.ROBUST:
        return _score_robust(ids, predictions, labels, kind=kind, label_set=label_set, mapping=mapping)
    targets = [paper_target(label, kind, mapping) for label in labels]
    space = {paper_target(label, kind, mapping) for label in label_set}
    return _score_snapped(ids, predictions, targets, snap_paper(predictions, space, dataset), official=False)


@dataclass(frozen=True)
class _SnappedGroup:
    """A snapped classification group's numbers under any choice among its tied labels."""

    codes: LabelCodes
    targets: Sequence[str]
    chosen: np.ndarray  # label codes of the sorted-order choice
    top1: np.ndarray | None  # BEANS-Zero's Top-1 hits of that choice; official mode only

    def numbers(self, picks: Mapping[int, str] | None = None) -> dict[str, float]:
        """Headline metrics (and, official, BEANS-Zero's), with the tied answers in `picks` relabelled."""
        picks = picks or {}
        rows = list(picks)
        pred = self.chosen.copy()
        pred[rows] = self.codes.encode(picks.values())
        headline = self.codes.headline(pred)
        numbers = {name: headline[name] for name in HEADLINE_METRICS}
        if self.top1 is None:
            return numbers
        top1 = self.top1.copy()
        top1[rows] = [picks[row] in _comma_parts(self.targets[row]) for row in rows]
        return numbers | official_classification(headline, top1)


def _score_snapped(
    ids: Sequence[str], predictions: Sequence[str], targets: Sequence[str], snap: Snap, *, official: bool
) -> tuple[list[ScoredAnswer], Metrics]:
    answers = [
        ScoredAnswer(sample_id, text, target, guess, _outcome(target, guess), snap.ties.get(row, ()))
        for row, (sample_id, text, target, guess) in enumerate(zip(ids, predictions, targets, snap.labels, strict=True))
    ]
    codes = LabelCodes(targets, snap.labels, also=snap.space)
    top1 = top1_hits(targets, snap.labels) if official else None
    group = _SnappedGroup(codes, targets, codes.encode(snap.labels), top1)
    reported = group.numbers()
    metrics = codes.metrics(group.chosen, [answer.outcome for answer in answers])
    return answers, replace(
        metrics,
        official={name: value for name, value in reported.items() if name not in HEADLINE_METRICS},
        ties=tie_sensitivity(snap, len(snap.ties), reported, group.numbers),
    )


def _score_robust(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    kind: PromptKind,
    label_set: Sequence[str],
    mapping: LabelMapping | None,
) -> tuple[list[ScoredAnswer], Metrics]:
    common_index = AliasIndex({label: common_name_aliases(label) for label in label_set})
    scientific_index = None
    if mapping is not None and kind is not PromptKind.COMMON:
        scientific_index = AliasIndex(
            {label: [normalise(name) for name in mapping.accepted_names(label)] for label in label_set},
            tolerance=scientific_name_tolerance,
        )
    count_labels = {normalise(label): label for label in label_set}
    counts_answer = set(count_labels) == {"one", "more"}

    def resolve(text: str) -> str | None:
        if counts_answer:
            return count_class(text, count_labels["one"], count_labels["more"])
        return common_index.match(text)

    def placeholder(text: str) -> str:
        return ROBUST_ABSTENTION if is_abstention(text) else ROBUST_OUT_OF_SET

    answers: list[ScoredAnswer] = []
    scientific_hits: list[bool] = []
    common_hits: list[bool] = []
    unscorable = 0
    for sample_id, text, label in zip(ids, predictions, labels, strict=True):
        if kind is PromptKind.SCIENTIFIC and scientific_index is not None:
            if not mapping.accepted_names(label):
                unscorable += 1  # the mapping has no scientific name: no answer could be right
                continue
            guess = scientific_index.match(text)
        elif kind is PromptKind.COMBINED and scientific_index is not None:
            common_guess = common_index.match(text)
            scientific_guess = scientific_index.match(text)
            common_hits.append(common_guess == label)
            if mapping.accepted_names(label):
                scientific_hits.append(scientific_guess == label)
            guess = common_guess or scientific_guess
        else:
            guess = resolve(text)
        predicted = guess if guess is not None else placeholder(text)
        answers.append(ScoredAnswer(sample_id, text, label, predicted, _outcome(label, predicted)))
    extra = {"unscorable": float(unscorable)}
    if kind is PromptKind.COMBINED and scientific_index is not None:
        extra["common_part_accuracy"] = float(np.mean(common_hits)) if common_hits else math.nan
        extra["scientific_part_accuracy"] = float(np.mean(scientific_hits)) if scientific_hits else math.nan
    return answers, classification_metrics(
        [a.label for a in answers], [a.predicted for a in answers], [a.outcome for a in answers], extra
    )
