"""Metrics of likelihood sweeps, from each row's stored distribution over its subset's closed label set.

Why apart from evaluation.scoring: scoring reads the answer text (the `prediction`, which a likelihood
row fills with its most likely label so every scoring mode still works); these metrics read the whole
distribution, which only likelihood rows have: what the model *knows* (how much probability it puts
on the right label, how well ranked, how calibrated) rather than what it *says*.

Per (dataset, prompt, grid point): accuracy and top-k accuracy of the ranking, macro / weighted F1 of
the most likely label, mean average precision and one-vs-rest AUROC of each label's probability
(macro over the labels where they are defined: AP needs a positive, AUROC a positive and a negative),
expected calibration error over ECE_BINS equal-width confidence bins, and the reliability diagram's
bins. Probabilities are the softmax of the stored log-likelihoods: P(answer = label | one of them).
Everything is numpy; tests/test_likelihood_metrics.py checks it against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation.results import GridKey, grid_order

ECE_BINS = 15
TOP_K = (1, 3, 5)
DISTRIBUTION_FIELD = "label_log_likelihoods"  # evaluation.sweep.label_sets writes it
LIKELIHOOD_METRICS = {
    "accuracy": "accuracy",
    "top3_accuracy": "top-3 accuracy",
    "top5_accuracy": "top-5 accuracy",
    "f1_macro": "macro F1",
    "f1_weighted": "weighted F1",
    "mean_average_precision": "mean average precision",
    "auroc": "one-vs-rest AUROC",
    "ece": "expected calibration error",
}
FRAME_COLUMNS = ["dataset", "prompt", "alpha", "recipe", "n", "labels", *LIKELIHOOD_METRICS]
RELIABILITY_COLUMNS = ["dataset", "prompt", "alpha", "bin", "lower", "upper", "count", "confidence", "accuracy"]


@dataclass(frozen=True)
class Distributions:
    """One (dataset, prompt, grid point)'s rows: each row's probabilities over `labels`, and its true label's index
    (-1 where the true label is not among them: wrong at every rank, a negative for every label)."""

    labels: tuple[str, ...]
    probabilities: np.ndarray  # (rows, labels)
    truth: np.ndarray  # (rows,), int

    @classmethod
    def of(
        cls, labels: Sequence[str], log_likelihoods: Sequence[Sequence[float]], truth: Sequence[str]
    ) -> Distributions:
        index = {label: i for i, label in enumerate(labels)}
        scores = np.asarray(log_likelihoods, dtype=float).reshape(len(log_likelihoods), len(labels))
        return cls(tuple(labels), softmax(scores), np.array([index.get(t, -1) for t in truth], dtype=int))


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def group_distributions(
    records: Iterable[Mapping[str, Any]], label_sets: Mapping[str, Sequence[str]]
) -> dict[tuple[str, str, GridKey], Distributions]:
    """Results records (raw results.jsonl objects) with a distribution, grouped by (dataset, prompt, grid key)."""
    grouped: dict[tuple[str, str, GridKey], tuple[list, list]] = {}
    for record in records:
        scores = record.get(DISTRIBUTION_FIELD)
        if scores is None or record["dataset"] not in label_sets:
            continue
        key = (record["dataset"], record["prompt_name"], record["alpha"])
        rows, truth = grouped.setdefault(key, ([], []))
        rows.append(scores)
        truth.append(record["label"])
    return {key: Distributions.of(label_sets[key[0]], rows, truth) for key, (rows, truth) in grouped.items()}


# -- the metrics ----------------------------------------------------------------------------------


def top_k_accuracy(dist: Distributions, k: int) -> float:
    """The share of rows whose true label is among the k most probable (ties broken by label order)."""
    if len(dist.truth) == 0:
        return float("nan")
    ranked = np.argsort(-dist.probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean([t >= 0 and t in row for t, row in zip(dist.truth, ranked, strict=True)]))


def f1_scores(dist: Distributions) -> tuple[float, float]:
    """(macro, weighted) F1 of the most likely label, over the labels that are true or predicted somewhere
    (scikit-learn's default); weighted by each label's true count. A label never predicted has F1 0."""
    predicted = dist.probabilities.argmax(axis=1)
    classes = np.union1d(dist.truth[dist.truth >= 0], predicted)
    if len(classes) == 0:
        return float("nan"), float("nan")
    f1s, support = [], []
    for label in classes:
        tp = np.sum((predicted == label) & (dist.truth == label))
        denominator = np.sum(predicted == label) + np.sum(dist.truth == label)
        f1s.append(2 * tp / denominator if denominator else 0.0)
        support.append(np.sum(dist.truth == label))
    f1 = np.array(f1s, dtype=float)
    weights = np.array(support, dtype=float)
    weighted = float(np.sum(f1 * weights) / weights.sum()) if weights.sum() else float("nan")
    return float(f1.mean()), weighted


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step precision-recall curve, one step per distinct score (scikit-learn's definition)."""
    order = np.argsort(-scores, kind="stable")
    positive, scores = positive[order], scores[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]
    tp = np.cumsum(positive)[last_of_tie]
    seen = np.arange(1, len(scores) + 1)[last_of_tie]
    precision, recall = tp / seen, tp / positive.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """P(a positive outscores a negative), ties counting half: the Mann-Whitney U over average ranks."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2  # 1-based average rank of the tie
    n_pos = positive.sum()
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest(dist: Distributions) -> tuple[float, float]:
    """(mean AP over labels with a positive, mean AUROC over labels with a positive and a negative)."""
    aps, aucs = [], []
    for label in range(len(dist.labels)):
        positive = dist.truth == label
        if not positive.any():
            continue
        scores = dist.probabilities[:, label]
        aps.append(average_precision(positive, scores))
        if not positive.all():
            aucs.append(auroc(positive, scores))
    return (float(np.mean(aps)) if aps else float("nan")), (float(np.mean(aucs)) if aucs else float("nan"))


def reliability_bins(dist: Distributions, bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width bin of the top probability (right-closed; the first also takes 0): rows, mean
    confidence and accuracy; empty bins have count 0 and NaN means."""
    confidence = dist.probabilities.max(axis=1)
    correct = dist.probabilities.argmax(axis=1) == dist.truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    records = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        records.append(
            {
                "bin": b,
                "lower": edges[b],
                "upper": edges[b + 1],
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else float("nan"),
                "accuracy": float(correct[inside].mean()) if count else float("nan"),
            }
        )
    return pd.DataFrame.from_records(records)


def expected_calibration_error(dist: Distributions, bins: int = ECE_BINS) -> float:
    """Sum over bins of (rows in the bin / rows) * |accuracy - mean confidence|."""
    table = reliability_bins(dist, bins)
    filled = table[table["count"] > 0]
    if filled.empty:
        return float("nan")
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float(np.sum(filled["count"] * gaps) / filled["count"].sum())


def distribution_metrics(dist: Distributions) -> dict[str, float]:
    macro, weighted = f1_scores(dist)
    mean_ap, mean_auroc = one_vs_rest(dist)
    return {
        "accuracy": top_k_accuracy(dist, 1),
        "top3_accuracy": top_k_accuracy(dist, 3),
        "top5_accuracy": top_k_accuracy(dist, 5),
        "f1_macro": macro,
        "f1_weighted": weighted,
        "mean_average_precision": mean_ap,
        "auroc": mean_auroc,
        "ece": expected_calibration_error(dist),
    }


# -- frames for tables and figures ------------------------------------------------------------------


def _ordered(groups: Mapping[tuple[str, str, GridKey], Distributions]) -> list[tuple[str, str, GridKey]]:
    return sorted(groups, key=lambda key: (key[0], key[1], grid_order(key[2])))


def likelihood_metrics_frame(groups: Mapping[tuple[str, str, GridKey], Distributions]) -> pd.DataFrame:
    """One row per (dataset, prompt, grid point), plain alphas first by value, then recipes by name."""
    records = [
        {
            "dataset": dataset,
            "prompt": prompt,
            "alpha": alpha,
            "recipe": isinstance(alpha, str),
            "n": len(groups[(dataset, prompt, alpha)].truth),
            "labels": len(groups[(dataset, prompt, alpha)].labels),
            **distribution_metrics(groups[(dataset, prompt, alpha)]),
        }
        for dataset, prompt, alpha in _ordered(groups)
    ]
    return pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)


def reliability_frame(groups: Mapping[tuple[str, str, GridKey], Distributions]) -> pd.DataFrame:
    """The reliability diagram's bins of every (dataset, prompt, grid point)."""
    parts = [
        reliability_bins(groups[key]).assign(dataset=key[0], prompt=key[1], alpha=key[2]) for key in _ordered(groups)
    ]
    if not parts:
        return pd.DataFrame(columns=RELIABILITY_COLUMNS)
    return pd.concat(parts, ignore_index=True)[RELIABILITY_COLUMNS]
