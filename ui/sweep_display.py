"""What the Sweeps tab draws of a scored sweep: its figures under the tab's filters, an overlay of two
sweeps, and the paper's own figures of a sweep started from a paper experiment.

Why apart from ui.sweep_figures: those draw one figure from a metrics frame; this decides which
figures a view gets and how the tab's filters apply to it (filters left over from another sweep
fall back to all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go

from evaluation.presets import Preset, preset_of
from evaluation.sweep import SweepSpec
from evaluation.sweep_metrics import METRIC_LABELS, metrics_frame
from evaluation.sweep_views import SweepView
from ui.sweep_figures import (
    CORRECT_FILTERS,
    answers_table,
    error_breakdown_figure,
    metric_vs_alpha_figure,
    overlay_figure,
    tradeoff_figure,
)

ALL = "(all)"
PAPER_METRIC = "as in the paper"


class DisplayError(ValueError):
    """The tab asked for something a view cannot show (two copies of one sweep, an unknown metric)."""


class SweepFigures(NamedTuple):
    accuracy: go.Figure
    f1: go.Figure
    tradeoff: go.Figure
    breakdown: go.Figure
    answers: pd.DataFrame


def filter_choices(view: SweepView) -> tuple[list[str], list[str]]:
    """The dataset and prompt filter options of a view, each led by ALL."""
    datasets = sorted({score.dataset for score in view.scores})
    prompts = sorted({score.prompt_name for score in view.scores})
    return [ALL, *datasets], [ALL, *prompts]


def view_figures(view: SweepView, dataset: str = ALL, prompt: str = ALL, correct: str = ALL) -> SweepFigures:
    """The tab's figures; filters not present in this view (left over from another sweep) fall back to all."""
    datasets, prompts = filter_choices(view)
    chosen_dataset = dataset if dataset in datasets[1:] else None
    chosen_prompt = prompt if prompt in prompts[1:] else None
    frame = metrics_frame(view.scores)
    return SweepFigures(
        accuracy=metric_vs_alpha_figure(frame, "accuracy"),
        f1=metric_vs_alpha_figure(frame, "f1_weighted"),
        tradeoff=tradeoff_figure(frame),
        breakdown=error_breakdown_figure(frame, *_breakdown_pair(frame, chosen_dataset, chosen_prompt)),
        answers=answers_table(
            view.scores,
            dataset=chosen_dataset,
            prompt=chosen_prompt,
            correct=correct if correct in CORRECT_FILTERS else None,
        ),
    )


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
    return overlay_figure({view.short_key: metrics_frame(view.scores) for view in views}, metric)


def paper_figures(view: SweepView, metric: str = PAPER_METRIC) -> tuple[Preset | None, list[tuple[str, go.Figure]]]:
    """The paper's figures of a sweep started from a preset (same questions), in `metric` or the paper's own."""
    if metric != PAPER_METRIC and metric not in METRIC_LABELS:
        raise DisplayError(f"unknown metric {metric!r}; choose one of {[PAPER_METRIC, *METRIC_LABELS]}")
    preset = preset_of(SweepSpec.from_dict(view.spec)) if view.spec is not None else None
    if preset is None:
        return None, []
    return preset, preset.make_figures(view.scores, None if metric == PAPER_METRIC else metric)
