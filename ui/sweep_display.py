"""What the Sweeps tab draws of a scored sweep: its figures under the tab's filters, an overlay of two
sweeps, and the paper's own figures of a sweep started from a paper experiment.

Why apart from ui.sweep_figures: those draw one figure from a metrics frame; this decides which
figures a view gets and how the tab's filters apply to it (filters left over from another sweep
fall back to all).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go

from evaluation.likelihood_metrics import likelihood_metrics_frame, reliability_frame
from evaluation.presets import Preset, preset_of
from evaluation.scoring import GroupScore
from evaluation.sweep import SweepSpec
from evaluation.sweep_metrics import METRIC_LABELS, confusion_counts, metrics_frame, per_class_accuracy
from evaluation.sweep_views import SweepView
from ui.class_figures import confusion_figure, per_class_heatmap
from ui.paper_figures import make_figures
from ui.sweep_figures import (
    CORRECT_FILTERS,
    answers_table,
    error_breakdown_figure,
    knows_vs_says_figure,
    metric_vs_alpha_figure,
    overlay_figure,
    reliability_figure,
    tradeoff_figure,
)
from ui.tables import per_class_table

ALL = "(all)"
PAPER_METRIC = "as in the paper"
TRADEOFF_TITLE = "Combined vs individual prompts (accuracy), by alpha"


class DisplayError(ValueError):
    """The tab asked for something a view cannot show (two copies of one sweep, an unknown metric)."""


class SweepFigures(NamedTuple):
    accuracy: go.Figure
    f1: go.Figure
    tradeoff: go.Figure
    breakdown: go.Figure
    answers: pd.DataFrame


def named_scores(view: SweepView) -> list[GroupScore]:
    """The view's scores with numbered prompts (an imported folder without prompt_names.json: '0', '1', '2')
    named by their kind (common, scientific, combined), so legends and filters say what was asked."""
    numbered = {score.prompt_name: score.kind.value for score in view.scores if score.prompt_name.isdigit()}
    if not numbered:
        return list(view.scores)
    kinds = Counter(numbered.values())
    names = {name: kind if kinds[kind] == 1 else f"{kind} ({name})" for name, kind in numbered.items()}
    return [replace(score, prompt_name=names.get(score.prompt_name, score.prompt_name)) for score in view.scores]


def filter_choices(view: SweepView) -> tuple[list[str], list[str]]:
    """The dataset and prompt filter options of a view, each led by ALL."""
    scores = named_scores(view)
    datasets = sorted({score.dataset for score in scores})
    prompts = sorted({score.prompt_name for score in scores})
    return [ALL, *datasets], [ALL, *prompts]


def view_figures(
    view: SweepView, dataset: str = ALL, prompt: str = ALL, correct: str = ALL, says: SweepView | None = None
) -> SweepFigures:
    """The tab's figures; filters not present in this view (left over from another sweep) fall back to all.
    `says`: for a likelihood sweep, its generation twin, drawn beside it (knows vs says)."""
    datasets, prompts = filter_choices(view)
    chosen_dataset = dataset if dataset in datasets[1:] else None
    chosen_prompt = prompt if prompt in prompts[1:] else None
    scores = named_scores(view)
    frame = metrics_frame(scores)
    accuracy, breakdown = _likelihood_pair(view, chosen_dataset, chosen_prompt, says)
    tradeoff = tradeoff_figure(frame)
    # a half-width plot cuts the long title: a shorter one, and room above it
    tradeoff.update_layout(title={"text": TRADEOFF_TITLE, "font": {"size": 14}}, margin={"t": 60, "l": 60, "r": 20})
    return SweepFigures(
        accuracy=accuracy or metric_vs_alpha_figure(frame, "accuracy"),
        f1=metric_vs_alpha_figure(frame, "f1_weighted"),
        tradeoff=tradeoff,
        breakdown=breakdown or error_breakdown_figure(frame, *_breakdown_pair(frame, chosen_dataset, chosen_prompt)),
        answers=short_answer_headers(
            answers_table(
                scores,
                dataset=chosen_dataset,
                prompt=chosen_prompt,
                correct=correct if correct in CORRECT_FILTERS else None,
            )
        ),
    )


def _likelihood_pair(
    view: SweepView, dataset: str | None, prompt: str | None, says: SweepView | None = None
) -> tuple[go.Figure | None, go.Figure | None]:
    """A likelihood sweep's (knows-vs-says accuracy, reliability diagram), shown in the accuracy and breakdown
    places (its answers are always in the label set, so the breakdown is only right vs confused); else Nones."""
    if not view.is_likelihood:
        return None, None
    groups = view.distribution_groups()
    said = metrics_frame(named_scores(says)) if says is not None else None
    return knows_vs_says_figure(likelihood_metrics_frame(groups), said), reliability_figure(
        reliability_frame(groups), dataset, prompt
    )


def knows_vs_says(likelihood: SweepView, generation: SweepView, metric: str = "accuracy") -> go.Figure:
    """One likelihood sweep against one generation sweep (the same data, prompts and grid, answered both ways)."""
    if not likelihood.is_likelihood:
        raise DisplayError(f"{likelihood.short_key} is not a likelihood sweep")
    knows = likelihood_metrics_frame(likelihood.distribution_groups())
    return knows_vs_says_figure(knows, metrics_frame(named_scores(generation)), metric)


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
    """Several sweeps' metric-vs-alpha curves in one figure, each named by its sweep."""
    if len({view.key for view in views}) != len(views):
        raise DisplayError("choose two different sweeps to compare")
    return overlay_figure({view.short_key: metrics_frame(named_scores(view)) for view in views}, metric)


def paper_figures(view: SweepView, metric: str = PAPER_METRIC) -> tuple[Preset | None, list[tuple[str, go.Figure]]]:
    """The paper's figures of a sweep started from a preset (same questions), in `metric` or the paper's own."""
    if metric != PAPER_METRIC and metric not in METRIC_LABELS:
        raise DisplayError(f"unknown metric {metric!r}; choose one of {[PAPER_METRIC, *METRIC_LABELS]}")
    preset = preset_of(SweepSpec.from_dict(view.spec)) if view.spec is not None else None
    if preset is None:
        return None, []
    return preset, make_figures(preset, view.scores, None if metric == PAPER_METRIC else metric)


class ClassFigures(NamedTuple):
    alphas: list[float]
    alpha: float | None
    table: pd.DataFrame
    heatmap: go.Figure
    confusion: go.Figure


def class_figures(
    view: SweepView, dataset: str = ALL, prompt: str = ALL, alpha: float | None = None, top_n: int = 10
) -> ClassFigures:
    """Per-class accuracy (table and heatmap) and the confusion matrix at `alpha` (default: the largest).

    Under the tab's data set and prompt filters, scored in the view's mode; a filter or alpha left over
    from another sweep falls back to all / the largest alpha.
    """
    datasets, prompts = filter_choices(view)
    chosen_dataset = dataset if dataset in datasets[1:] else None
    chosen_prompt = prompt if prompt in prompts[1:] else None
    scores = named_scores(view)
    frame = per_class_accuracy(scores, chosen_dataset, chosen_prompt)
    alphas = [column for column in frame.columns if column not in ("class", "n")]
    chosen_alpha = alpha if alpha in alphas else (alphas[-1] if alphas else None)
    counts = (
        confusion_counts(scores, chosen_alpha, chosen_dataset, chosen_prompt, top_n)
        if chosen_alpha is not None
        else pd.DataFrame()
    )
    return ClassFigures(
        alphas, chosen_alpha, per_class_table(frame), per_class_heatmap(frame), confusion_figure(counts, chosen_alpha)
    )


def short_answer_headers(answers: pd.DataFrame) -> pd.DataFrame:
    """The answers table with 'α=0.5' headers instead of 'alpha=0.5' (narrow columns, one header line)."""
    return answers.rename(
        columns=lambda column: "α=" + column.removeprefix("alpha=") if column.startswith("alpha=") else column
    )
