"""Compatibility names for the sweep figures, now split by job: numbers in evaluation.sweep_metrics,
figures and the answers table in ui.sweep_figures.

Why it still exists: evaluation.presets (the paper's figures of each preset) and two test modules
import these names from here, and they are outside the UI redesign. Once presets.py imports
ui.sweep_figures and evaluation.sweep_metrics directly, this module goes.
"""

from __future__ import annotations

from evaluation.sweep_metrics import (
    FRAME_COLUMNS,
    INDIVIDUAL_KINDS,
    METRIC_LABELS,
    PlotInputError,
    class_baselines,
    label_counts,
    metrics_frame,
    tradeoff_points,
)
from ui.sweep_figures import (
    ALPHA_AXIS_TITLE,
    BAR_COLOURS,
    BASELINE_DASHES,
    CORRECT_FILTERS,
    OUTCOME_COLOURS,
    OUTCOME_LABELS,
    SWEEP_DASHES,
    add_baselines,
    alpha_bars_figure,
    alpha_column,
    answers_table,
    error_breakdown_figure,
    metric_vs_alpha_figure,
    metric_vs_alpha_panels,
    overlay_figure,
    tradeoff_figure,
)

__all__ = [
    "ALPHA_AXIS_TITLE",
    "BAR_COLOURS",
    "BASELINE_DASHES",
    "CORRECT_FILTERS",
    "FRAME_COLUMNS",
    "INDIVIDUAL_KINDS",
    "METRIC_LABELS",
    "OUTCOME_COLOURS",
    "OUTCOME_LABELS",
    "SWEEP_DASHES",
    "PlotInputError",
    "add_baselines",
    "alpha_bars_figure",
    "alpha_column",
    "answers_table",
    "class_baselines",
    "error_breakdown_figure",
    "label_counts",
    "metric_vs_alpha_figure",
    "metric_vs_alpha_panels",
    "metrics_frame",
    "overlay_figure",
    "tradeoff_figure",
    "tradeoff_points",
]
