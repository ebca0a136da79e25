"""Metrics of one (dataset, prompt, alpha) group of classification answers, as array sums over label codes.

Why codes: the tie ranges (snap.tie_sensitivity) recompute a group's numbers for many label orders, so one
set of predictions must cost a few bincounts, not a scikit-learn call, and still equal scikit-learn's (and
so BEANS-Zero's) numbers to the bit. The records here (Metrics, ClassMetrics, TieSensitivity) serve
detection too (detection_metrics). Imports only modes of evaluation.scoring, and no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.scoring.modes import SENTINELS, Outcome, ScoringError

HEADLINE_METRICS = ("accuracy", "f1_weighted", "f1_macro")


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class TieSensitivity:
    """How far the evaluator's arbitrary choice among equally near labels could move a group's numbers.

    `ranges` maps each metric (the headline ones, and in official mode BEANS-Zero's names too) to its
    (min, max) over the sorted order we report and TIE_ORDERS seeded random label orders: a difference
    between two alphas inside these ranges is within the evaluator's own arbitrariness.
    """

    tied: int  # answers whose nearest label was one of several equally near ones
    ranges: Mapping[str, tuple[float, float]]

    def columns(self) -> dict[str, float]:
        """Flat columns for a metrics table: tied_answers, then <metric>_tie_min and <metric>_tie_max."""
        columns: dict[str, float] = {"tied_answers": self.tied}
        for name, (low, high) in self.ranges.items():
            columns[f"{name}_tie_min"] = low
            columns[f"{name}_tie_max"] = high
        return columns


@dataclass(frozen=True)
class Metrics:
    """Metrics of one (dataset, prompt, alpha) group; rates are fractions of the n scored answers.

    `official` holds BEANS-Zero's own metrics under its own names (official mode only); `ties` the tie
    sensitivity of the modes that snap to the nearest label (official and paper), None for robust.
    """

    n: int
    accuracy: float
    f1_weighted: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    counts: Mapping[Outcome, int]
    per_class: Mapping[str, ClassMetrics]
    extra: Mapping[str, float] = field(default_factory=dict)
    official: Mapping[str, float] = field(default_factory=dict)
    ties: TieSensitivity | None = None

    def rate(self, outcome: Outcome) -> float:
        return self.counts.get(outcome, 0) / self.n if self.n else math.nan

    def summary(self) -> dict[str, float | None]:
        """The six headline numbers of the CLI's --json output (None where no answer could be scored)."""
        values = {
            "accuracy": self.accuracy,
            "f1_weighted": self.f1_weighted,
            "f1_macro": self.f1_macro,
            "out_of_set": self.rate(Outcome.OUT_OF_SET),
            "in_set_confusion": self.rate(Outcome.IN_SET_CONFUSION),
            "abstention": self.rate(Outcome.ABSTENTION),
        }
        return {key: None if math.isnan(value) else value for key, value in values.items()}


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    outcomes: Sequence[Outcome],
    extra: Mapping[str, float] | None = None,
) -> Metrics:
    """Accuracy, weighted and macro F1, per-class scores and the error breakdown.

    Weighted scores are scikit-learn's (average="weighted", zero_division=0, over the labels in y_true
    or y_pred), computed the way it computes them so that official numbers equal BEANS-Zero's to the bit.
    Macro F1 averages over the real classes only: the out-of-set and abstention placeholders are not
    classes (and, never being true labels, carry no weight in the weighted scores either).
    """
    if not (len(y_true) == len(y_pred) == len(outcomes)):
        raise ScoringError("y_true, y_pred and outcomes must have the same length")
    codes = LabelCodes(y_true, y_pred)
    return codes.metrics(codes.encode(y_pred), outcomes, extra)


class LabelCodes:
    """A group's labels as integer codes, so that its metrics, and those of other tie orders, are array sums."""

    def __init__(self, y_true: Sequence[str], y_pred: Sequence[str], also: Iterable[str] = ()):
        self.names = sorted(set(y_true) | set(y_pred) | set(also))
        self.index = {name: i for i, name in enumerate(self.names)}
        self.truth = self.encode(y_true)
        self.is_class = np.array([name not in SENTINELS for name in self.names], dtype=bool)

    def encode(self, values: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index[value] for value in values), dtype=np.int64)

    def label_scores(self, pred: np.ndarray) -> dict[str, np.ndarray]:
        """Per label: support, predicted, hits and sklearn's precision, recall and F1 (0 where undefined)."""
        size = len(self.names)
        support = np.bincount(self.truth, minlength=size)
        predicted = np.bincount(pred, minlength=size)
        hits = np.bincount(self.truth[self.truth == pred], minlength=size)
        return {
            "support": support,
            "predicted": predicted,
            "hits": hits,
            "precision": _divide(hits, predicted),
            "recall": _divide(hits, support),
            "f1": _divide(2 * hits, predicted + support),
        }

    def headline(self, pred: np.ndarray) -> dict[str, float]:
        """accuracy, f1_weighted, f1_macro, precision_weighted and recall_weighted of one set of predictions."""
        return self._headline(self.label_scores(pred), len(pred))

    def _headline(self, scores: Mapping[str, np.ndarray], n: int) -> dict[str, float]:
        present = (scores["support"] + scores["predicted"]) > 0
        real = present & self.is_class
        weights = scores["support"][present]

        def weighted(name: str) -> float:
            return float(np.average(scores[name][present], weights=weights)) if n else math.nan

        return {
            "accuracy": float(scores["hits"].sum() / n) if n else math.nan,
            "f1_weighted": weighted("f1"),
            "f1_macro": float(np.mean(scores["f1"][real])) if real.any() else math.nan,
            "precision_weighted": weighted("precision"),
            "recall_weighted": weighted("recall"),
        }

    def metrics(
        self, pred: np.ndarray, outcomes: Sequence[Outcome], extra: Mapping[str, float] | None = None
    ) -> Metrics:
        scores = self.label_scores(pred)
        real = ((scores["support"] + scores["predicted"]) > 0) & self.is_class
        per_class = {
            self.names[i]: ClassMetrics(
                *(float(scores[name][i]) for name in ("precision", "recall", "f1")), int(scores["support"][i])
            )
            for i in np.flatnonzero(real)
        }
        return Metrics(
            n=len(pred),
            counts=outcome_counts(outcomes),
            per_class=per_class,
            extra=dict(extra or {}),
            **self._headline(scores, len(pred)),
        )


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[Outcome, int]:
    counts = {outcome: 0 for outcome in Outcome}
    for outcome in outcomes:
        counts[outcome] += 1
    return counts


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def top1_hits(y_true: Sequence[str], y_pred: Sequence[str]) -> np.ndarray:
    """BEANS-Zero's Top-1 test: the prediction equals one of the true label's comma-separated parts.

    A label that itself holds a comma ("Beluga, White Whale") is thus never right in full, only when the
    answer snapped to another label that equals one of its parts.
    """
    return np.array([guess in _comma_parts(truth) for truth, guess in zip(y_true, y_pred, strict=True)], dtype=bool)


def official_classification(headline: Mapping[str, float], top1: np.ndarray) -> dict[str, float]:
    """BEANS-Zero's classification metrics, named as its evaluator names them (all weighted by support)."""
    return {
        "Accuracy": headline["accuracy"],
        "Precision": headline["precision_weighted"],
        "Recall": headline["recall_weighted"],
        "F1 Score": headline["f1_weighted"],
        "Top-1 Accuracy": float(top1.sum() / len(top1)) if len(top1) else math.nan,
    }


def _comma_parts(label: str) -> list[str]:
    return [part.strip() for part in label.split(",")]
