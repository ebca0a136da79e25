"""evaluation.likelihood_metrics: hand-computed small cases, and the numpy metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, top_k_accuracy_score

from evaluation.likelihood_metrics import (
    ECE_BINS,
    Distributions,
    auroc,
    distribution_metrics,
    group_distributions,
    likelihood_metrics_frame,
    reliability_bins,
    reliability_frame,
)

LABELS = ("a", "b", "c")
# Probabilities (stored as their logs); no confidence lies on a bin edge of the 15 bins.
PROBS = [[0.7, 0.2, 0.1], [0.1, 0.62, 0.28], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]]
TRUTH = ["a", "c", "c", "b"]


def hand_case() -> Distributions:
    return Distributions.of(LABELS, np.log(PROBS).tolist(), TRUTH)


def test_the_hand_computed_case():
    metrics = distribution_metrics(hand_case())
    assert metrics["accuracy"] == 0.5  # a, b, c, a predicted against a, c, c, b
    assert metrics["top3_accuracy"] == metrics["top5_accuracy"] == 1.0
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert metrics["f1_weighted"] == pytest.approx((2 / 3 + 0 + 2 * 2 / 3) / 4)
    assert metrics["mean_average_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["auroc"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    # bins: 0.7 (right, gap 0.3), 0.62 (wrong, gap 0.62), 0.5 and 0.5 (one right: gap 0)
    assert metrics["ece"] == pytest.approx((0.3 + 0.62 + 0) / 4)


def test_reliability_bins_count_every_row_once():
    table = reliability_bins(hand_case())
    assert len(table) == ECE_BINS and table["count"].sum() == 4
    filled = table[table["count"] > 0].set_index("bin")
    assert filled.loc[7, "count"] == 2 and filled.loc[7, "accuracy"] == 0.5
    assert filled.loc[10, "confidence"] == pytest.approx(0.7)


def test_a_true_label_outside_the_set_is_wrong_at_every_rank():
    dist = Distributions.of(LABELS, np.log(PROBS[:2]).tolist(), ["a", "zebra"])
    assert dist.truth.tolist() == [0, -1]
    assert distribution_metrics(dist)["top3_accuracy"] == 0.5


def test_auroc_counts_ties_half():
    assert auroc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert auroc(np.array([True, False, False]), np.array([0.5, 0.5, 0.1])) == 0.75


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = tuple(f"label {i}" for i in range(7))
    rows = 60
    truth = rng.integers(0, len(labels), rows)
    scores = rng.normal(size=(rows, len(labels))) + 1.5 * np.eye(len(labels))[truth]
    scores = np.round(scores, 1)  # ties, which AP and AUROC must handle as scikit-learn does
    dist = Distributions.of(labels, scores.tolist(), [labels[t] for t in truth])
    metrics = distribution_metrics(dist)
    probs, predicted = dist.probabilities, dist.probabilities.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == truth))
    noisy = scores + rng.normal(scale=1e-3, size=scores.shape)
    untied = Distributions.of(labels, noisy.tolist(), [labels[t] for t in truth])  # sklearn breaks rank ties otherwise
    for k in (3, 5):
        expected = top_k_accuracy_score(truth, untied.probabilities, k=k, labels=range(len(labels)))
        assert distribution_metrics(untied)[f"top{k}_accuracy"] == pytest.approx(expected)
    assert metrics["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert metrics["f1_weighted"] == pytest.approx(f1_score(truth, predicted, average="weighted", zero_division=0))
    onehot = np.eye(len(labels))[truth]
    present = onehot.any(axis=0)
    expected_ap = average_precision_score(onehot[:, present], probs[:, present], average="macro")
    expected_auc = roc_auc_score(onehot[:, present], probs[:, present], average="macro")
    assert metrics["mean_average_precision"] == pytest.approx(expected_ap)
    assert metrics["auroc"] == pytest.approx(expected_auc)


def test_frames_group_stored_records_by_dataset_prompt_and_alpha():
    records = [
        {"dataset": "d", "prompt_name": "p", "alpha": alpha, "label": t, "label_log_likelihoods": np.log(p).tolist()}
        for alpha in (1.0, 0.0)
        for p, t in zip(PROBS, TRUTH, strict=True)
    ]
    records.append({"dataset": "d", "prompt_name": "p", "alpha": 0.0, "label": "a", "prediction": "a"})  # generated
    groups = group_distributions(records, {"d": list(LABELS)})
    frame = likelihood_metrics_frame(groups)
    assert frame["alpha"].tolist() == [0.0, 1.0] and frame["n"].tolist() == [4, 4]
    assert frame["accuracy"].tolist() == [0.5, 0.5] and not frame["recipe"].any()
    bins = reliability_frame(groups)
    assert len(bins) == 2 * ECE_BINS and bins["count"].sum() == 8
    assert likelihood_metrics_frame({}).empty and reliability_frame({}).empty
