"""The paper's figures of a preset, drawn from a sweep's scores: what each PresetFigure of
evaluation.presets describes (its kind and parameters), as plotly figures.

Why here and not in evaluation.presets: the presets are data (what to run, which figures to show), and
evaluation imports nothing of the UI; the drawing is the UI's (ui.sweep_figures). Plotly only, no gradio.
Every builder copes with a sweep still running (a data set or prompt not answered yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import plotly.graph_objects as go

from evaluation.presets import BARS, BREAKDOWN, CURVES, PANELS, TRADEOFF, Preset, PresetFigure
from evaluation.scoring import GroupScore
from evaluation.sweep_metrics import class_baselines, label_counts, metrics_frame
from ui.sweep_figures import (
    add_baselines,
    alpha_bars_figure,
    error_breakdown_figure,
    metric_vs_alpha_figure,
    metric_vs_alpha_panels,
    tradeoff_figure,
)

FigureBuilder = Callable[[PresetFigure, Sequence[GroupScore], str], go.Figure]


def make_figures(
    preset: Preset, scores: Sequence[GroupScore], metric: str | None = None
) -> list[tuple[str, go.Figure]]:
    """(caption, figure) for each of the preset's figures, from the scores written so far, in `metric`
    (None: the preset's own)."""
    chosen = metric or preset.default_metric
    return [(figure.caption, draw_figure(figure, scores, chosen)) for figure in preset.figures]


def draw_figure(figure: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    """One PresetFigure drawn from the scores in `metric`."""
    return BUILDERS[figure.kind](figure, scores, metric)


def _placeholder(title: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text="no answers yet", showarrow=False, x=0.5, y=0.5)
    figure.update_layout(title=title, height=380)
    return figure


def _with_baselines(figure: go.Figure, spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    """The baselines `spec` names, of its data set's classes, over the figure (none while it has no labels)."""
    if not spec.baselines:
        return figure
    counts = label_counts(scores).get(spec.dataset)
    if not counts:
        return figure
    values = class_baselines(counts, metric)
    return add_baselines(figure, {name: value for name, value in values.items() if name in spec.baselines})


def _curves(spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    return _with_baselines(metric_vs_alpha_figure(metrics_frame(scores), metric), spec, scores, metric)


def _panels(spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    return metric_vs_alpha_panels(metrics_frame(scores), metric)


def _tradeoff(spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    return tradeoff_figure(metrics_frame(scores), metric)


def _breakdown(spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    frame = metrics_frame(scores)
    if frame[(frame["dataset"] == spec.dataset) & (frame["prompt"] == spec.prompt)].empty:
        return _placeholder(f"Where the answers go: {spec.dataset} · {spec.prompt}")
    return error_breakdown_figure(frame, spec.dataset, spec.prompt)


def _bars(spec: PresetFigure, scores: Sequence[GroupScore], metric: str) -> go.Figure:
    prompts = None if spec.prompts is None else list(spec.prompts)
    alphas = None if spec.alphas is None else list(spec.alphas)
    figure = alpha_bars_figure(metrics_frame(scores), metric, alphas, prompts)
    return _with_baselines(figure, spec, scores, metric)


BUILDERS: dict[str, FigureBuilder] = {
    CURVES: _curves,
    PANELS: _panels,
    TRADEOFF: _tradeoff,
    BREAKDOWN: _breakdown,
    BARS: _bars,
}
