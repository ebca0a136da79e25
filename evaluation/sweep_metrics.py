"""The numbers behind a sweep's figures: one metrics row per (dataset, prompt, alpha), the trade-off points,
and the majority-class and random baselines of a closed set.

A grid point is a float alpha or a merge recipe: the `alpha` column holds its key (the float, or the
recipe's name) and `recipe` says which, since only plain alphas lie on an alpha axis. Rows come
ordered plain alphas first (by value), then recipes (by name). Where the scoring mode snaps answers
to labels, `<metric>_tie_min` / `<metric>_tie_max` give the range another tie order of the evaluator
could have produced (evaluation.scoring.TieSensitivity); NaN where it does not (robust mode).

Why apart from the figures (ui/sweep_figures.py): these are evaluation results, computed from the
scores alone, and the same numbers are checked against the paper's; the figures only draw them.
Everything here is a pure function of the scores, so a running sweep, a finished one and an
imported folder in the paper's layout give the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.prompts import PromptKind
from evaluation.results import grid_order
from evaluation.scoring import GroupScore, Outcome

METRIC_LABELS = {"accuracy": "accuracy", "f1_weighted": "weighted F1", "f1_macro": "macro F1"}
INDIVIDUAL_KINDS = (PromptKind.COMMON, PromptKind.SCIENTIFIC)
TIE_COLUMNS = [f"{metric}_tie_{end}" for metric in METRIC_LABELS for end in ("min", "max")]
FRAME_COLUMNS = [
    "dataset",
    "prompt",
    "kind",
    "alpha",
    "recipe",
    "n",
    *METRIC_LABELS,
    *(o.value for o in Outcome),
    *TIE_COLUMNS,
]


class PlotInputError(ValueError):
    """A figure or its numbers were asked for something the scores do not hold (an unknown metric, prompt or filter)."""


def metrics_frame(scores: Sequence[GroupScore]) -> pd.DataFrame:
    """One row per (dataset, prompt, grid point): n, accuracy, F1s, the share of each outcome and the tie ranges."""
    records = []
    for score in sorted(scores, key=lambda s: (s.dataset, s.prompt_name, grid_order(s.alpha))):
        metrics = score.metrics
        record = {
            "dataset": score.dataset,
            "prompt": score.prompt_name,
            "kind": score.kind.value,
            "alpha": score.alpha,
            "recipe": isinstance(score.alpha, str),
            "n": metrics.n,
            "accuracy": metrics.accuracy,
            "f1_weighted": metrics.f1_weighted,
            "f1_macro": metrics.f1_macro,
        }
        record.update({outcome.value: metrics.rate(outcome) for outcome in Outcome})
        if metrics.ties is not None:
            record.update({k: v for k, v in metrics.ties.columns().items() if k in TIE_COLUMNS})
        records.append(record)
    return pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)


def plain_alphas(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of plain float alphas: what an alpha axis can show (recipes are drawn beside it)."""
    plain = frame[~frame["recipe"].astype(bool)]
    return plain.assign(alpha=plain["alpha"].astype(float))


def check_metric(metric: str) -> str:
    """The metric's label; an unknown metric fails with the known ones named."""
    if metric not in METRIC_LABELS:
        raise PlotInputError(f"unknown metric {metric!r}; choose one of {sorted(METRIC_LABELS)}")
    return METRIC_LABELS[metric]


def tradeoff_points(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    combined: str | None = None,
    individual: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per dataset and alpha: the mean `metric` of the individual prompts and the combined prompt's.

    By default the combined prompt is the one whose text asks for "scientific name ... colon ...
    common name" and the individual ones are the common- and scientific-name prompts (as in the
    paper); name them explicitly for custom prompts. Alphas missing from any of them are left out.
    """
    check_metric(metric)
    rows = []
    for dataset, group in plain_alphas(frame).groupby("dataset", sort=True):
        combined_name, individual_names = _tradeoff_prompts(group, combined, individual)
        if combined_name is None or not individual_names:
            continue
        table = group.pivot_table(index="alpha", columns="prompt", values=metric, aggfunc="first")
        needed = [combined_name, *individual_names]
        if not set(needed) <= set(table.columns):
            continue
        table = table[needed].dropna()
        for alpha, values in table.iterrows():
            rows.append(
                {
                    "dataset": dataset,
                    "alpha": float(alpha),
                    "individual_mean": float(values[individual_names].mean()),
                    "combined": float(values[combined_name]),
                }
            )
    return pd.DataFrame.from_records(rows, columns=["dataset", "alpha", "individual_mean", "combined"])


def _tradeoff_prompts(
    group: pd.DataFrame, combined: str | None, individual: Sequence[str] | None
) -> tuple[str | None, list[str]]:
    kinds = dict(zip(group["prompt"], group["kind"], strict=False))
    if combined is None:
        combined = next((p for p in sorted(kinds) if kinds[p] == PromptKind.COMBINED.value), None)
    if individual is None:
        individual = [p for p in sorted(kinds) if kinds[p] in {k.value for k in INDIVIDUAL_KINDS}]
    unknown = [p for p in [combined, *individual] if p is not None and p not in kinds]
    if unknown:
        raise PlotInputError(f"no scores for prompt(s) {unknown}; the sweep has {sorted(kinds)}")
    return combined, [p for p in individual if p != combined]


def label_counts(scores: Sequence[GroupScore]) -> dict[str, dict[str, int]]:
    """Per data set, how many samples carry each label, read from its most complete (prompt, alpha) group."""
    fullest: dict[str, GroupScore] = {}
    for score in scores:
        if score.dataset not in fullest or len(score.answers) > len(fullest[score.dataset].answers):
            fullest[score.dataset] = score
    return {dataset: dict(Counter(a.label for a in score.answers)) for dataset, score in fullest.items()}


def class_baselines(counts: Mapping[str, int], metric: str = "accuracy") -> dict[str, float]:
    """What always answering the most frequent class, and answering uniformly at random, score (expected values).

    The lines the paper draws on its closed-set figures. Per class c with n_c of N samples and K
    classes, uniform guessing gets TP = n_c / K, so F1_c = 2 n_c / (N + K n_c); the majority class m
    gets F1_m = 2 n_m / (N + n_m) and every other class 0. Macro F1 averages over classes,
    weighted F1 weighs each class by n_c / N.
    """
    check_metric(metric)
    n = np.array([count for count in counts.values() if count > 0], dtype=float)
    if n.size == 0:
        raise PlotInputError("baselines need at least one labelled sample")
    total, classes = n.sum(), n.size
    if metric == "accuracy":
        return {"majority class": float(n.max() / total), "random": 1.0 / classes}
    majority = np.zeros(classes)
    top = int(n.argmax())
    majority[top] = 2 * n[top] / (total + n[top])
    uniform = 2 * n / (total + classes * n)
    weights = n / total if metric == "f1_weighted" else np.full(classes, 1.0 / classes)
    return {"majority class": float(weights @ majority), "random": float(weights @ uniform)}


OTHER_CLASS = "other"
OUTCOME_COLUMNS = {Outcome.OUT_OF_SET: "(out of set)", Outcome.ABSTENTION: "(abstention)"}


def _chosen(scores: Sequence[GroupScore], dataset: str | None, prompt: str | None) -> list[GroupScore]:
    return [
        score
        for score in scores
        if (dataset is None or score.dataset == dataset) and (prompt is None or score.prompt_name == prompt)
    ]


def per_class_accuracy(
    scores: Sequence[GroupScore], dataset: str | None = None, prompt: str | None = None
) -> pd.DataFrame:
    """Per true class and alpha: the share of its answers scored correct (in the scores' own scoring mode).

    Why per class: a merge can help frequent classes and cost rare ones while the mean barely moves.
    Answers of every chosen (dataset, prompt) are pooled. Columns: class, n (answers per alpha of the
    fullest alpha), then one column per alpha (float); rows sorted by n, largest first.
    """
    hits: dict[tuple[str, float], list[int]] = {}
    for score in _chosen(scores, dataset, prompt):
        for answer in score.answers:
            hits.setdefault((answer.label, score.alpha), []).append(answer.outcome is Outcome.CORRECT)
    alphas = sorted({alpha for _, alpha in hits})
    classes = sorted({label for label, _ in hits})
    records = []
    for label in classes:
        per_alpha = {alpha: hits.get((label, alpha)) for alpha in alphas}
        record: dict[str, object] = {"class": label, "n": max(len(v) for v in per_alpha.values() if v)}
        record |= {alpha: (float(np.mean(v)) if v else float("nan")) for alpha, v in per_alpha.items()}
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=["class", "n", *alphas])
    return frame.sort_values(["n", "class"], ascending=[False, True], ignore_index=True)


def confusion_counts(
    scores: Sequence[GroupScore],
    alpha: float,
    dataset: str | None = None,
    prompt: str | None = None,
    top_n: int = 10,
) -> pd.DataFrame:
    """Counts of true class (rows) x predicted class (columns) at one alpha, for the `top_n` most frequent classes.

    Why grouped: a closed set of 50 classes makes a matrix nobody can read; the less frequent true
    classes and predictions fall into "other". Answers outside the closed set and abstentions get
    their own columns, so they are not mistaken for a confusion with a real class.
    """
    if top_n < 1:
        raise PlotInputError(f"top-N classes must be at least 1, got {top_n}")
    answers = [a for score in _chosen(scores, dataset, prompt) if score.alpha == alpha for a in score.answers]
    counts = Counter(answer.label for answer in answers)
    top = [label for label, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_n]]
    rows = top + ([OTHER_CLASS] if len(counts) > len(top) else [])
    columns = [*rows]
    pairs: Counter[tuple[str, str]] = Counter()
    for answer in answers:
        truth = answer.label if answer.label in top else OTHER_CLASS
        in_top = answer.predicted if answer.predicted in top else OTHER_CLASS
        guess = OUTCOME_COLUMNS.get(answer.outcome, in_top)
        if guess not in columns:
            columns.append(guess)
        pairs[(truth, guess)] += 1
    return pd.DataFrame(
        [[pairs[(truth, guess)] for guess in columns] for truth in rows], index=rows, columns=columns, dtype=int
    )
