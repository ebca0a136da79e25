"""Metrics of one detection group, from its (answers, classes) true and predicted class matrices.

Apart from metrics.py because detection is multi-label: BEANS-Zero scores each class as a binary problem,
averages over the classes, and ranks rows with torch for its mAP; torch is imported only when mAP is
computed, so classification scoring stays free of it. Imports metrics and modes; knows nothing of answer
text or labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from evaluation.scoring.metrics import ClassMetrics, Metrics, outcome_counts
from evaluation.scoring.modes import Outcome


def detection_metrics(
    truth: np.ndarray, guess: np.ndarray, classes: Sequence[str], outcomes: Sequence[Outcome]
) -> Metrics:
    """Metrics of a detection group from its (answers, classes) true and predicted class matrices."""
    per_class = binary_class_metrics(truth, guess)
    values = detection_values(truth, guess)
    return Metrics(
        n=len(truth),
        accuracy=values["accuracy"],
        f1_weighted=values["f1_weighted"],
        f1_macro=values["f1_macro"],
        precision_weighted=_support_weighted([c.precision for c in per_class], truth),
        recall_weighted=_support_weighted([c.recall for c in per_class], truth),
        counts=outcome_counts(outcomes),
        per_class=dict(zip(classes, per_class, strict=True)),
        extra={name: values[name] for name in ("mAP", "precision_macro", "recall_macro")},
    )


def detection_values(truth: np.ndarray, guess: np.ndarray) -> dict[str, float]:
    """Exact-set accuracy and support-weighted F1 (ours), and BEANS-Zero's macro F1, precision, recall and mAP."""
    per_class = binary_class_metrics(truth, guess)
    classes = len(per_class)

    def macro(values: list[float]) -> float:
        return _sequential_sum(values) / classes if classes else math.nan

    return {
        "accuracy": float((truth == guess).all(axis=1).mean()) if len(truth) else math.nan,
        "f1_weighted": _support_weighted([c.f1 for c in per_class], truth),
        "f1_macro": macro([c.f1 for c in per_class]),
        "precision_macro": macro([c.precision for c in per_class]),
        "recall_macro": macro([c.recall for c in per_class]),
        "mAP": mean_average_precision(guess, truth) if classes else math.nan,
    }


def official_detection(values: Mapping[str, float]) -> dict[str, float]:
    """BEANS-Zero's detection metrics, named as its evaluator names them (all macro over the classes)."""
    return {
        "mAP": values["mAP"],
        "F1": values["f1_macro"],
        "Recall": values["recall_macro"],
        "Precision": values["precision_macro"],
    }


def binary_class_metrics(truth: np.ndarray, guess: np.ndarray) -> list[ClassMetrics]:
    """Per class, BEANS-Zero's binary precision, recall and F1 = 2PR/(P+R), 0 where undefined."""
    found = []
    hits, positives, trues = (truth & guess).sum(axis=0), guess.sum(axis=0), truth.sum(axis=0)
    for tp, predicted, support in zip(hits.tolist(), positives.tolist(), trues.tolist(), strict=True):
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0.0 else 0.0
        found.append(ClassMetrics(precision, recall, f1, support))
    return found


def _support_weighted(values: Sequence[float], truth: np.ndarray) -> float:
    support = truth.sum(axis=0)
    return float(np.average(values, weights=support)) if support.sum() else math.nan


def _sequential_sum(values: Iterable[float]) -> float:
    """Left to right, as BEANS-Zero's `+=` loop adds (Python 3.12's sum() compensates: another last bit)."""
    total = 0.0
    for value in values:
        total += value
    return total


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """BEANS-Zero's mAP, computed as it computes it: float32 torch tensors, rows ranked by torch.sort.

    With 0/1 predictions nearly every score is tied, and torch's unstable sort, not row order, decides how
    tied rows rank (so how much a true row scores): only the same call reproduces the evaluator's number.
    """
    import torch  # only detection needs it, so classification scoring stays free of torch

    scores_t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    truth_t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.int64))
    ranks = torch.arange(1, scores_t.shape[0] + 1).float()
    averages = torch.zeros(scores_t.shape[1])
    for k in range(scores_t.shape[1]):
        hits = truth_t[:, k][torch.sort(scores_t[:, k], 0, True).indices]
        precision = hits.float().cumsum(0).div(ranks)
        averages[k] = precision[hits.bool()].sum() / max(int(hits.sum()), 1)
    return float(averages.mean())
