"""The Sweeps tab's panel of the paper's own figures for a sweep started from a paper experiment.

Widgets and wiring only. A preset draws up to PAPER_FIGURE_COUNT figures; the panel holds that many
plots and hides the ones the selected sweep's preset does not use. `refresh_paper_figures` is this
panel's share of the tab's one timer: it redraws when the sweep's results change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.presets import PRESETS
from evaluation.sweep_metrics import METRIC_LABELS
from ui.errors import user_facing
from ui.sweep_display import PAPER_METRIC, paper_figures
from ui.sweeps_runs import Runs
from ui.sweeps_service import SweepsService
from ui.text import paper_figures_caption

logger = logging.getLogger("naturelm_app")

PAPER_FIGURE_COUNT = max(len(preset.figures) for preset in PRESETS.values())


@dataclass(frozen=True)
class PaperFigures:
    text: gr.Markdown
    metric: gr.Dropdown
    plots: tuple[gr.Plot, ...]

    @property
    def outputs(self) -> list[Any]:
        return [self.text, *self.plots]


def paper_figures_section() -> PaperFigures:
    """The caption, the metric to draw them in, and the plots, two a row as the tab's own figures."""
    with gr.Accordion("The paper's figures of the selected sweep", open=False, elem_id="sweep-paper-figures"):
        with gr.Row():
            text = gr.Markdown(elem_id="sweep-paper-figures-text")
            metric = gr.Dropdown(
                [PAPER_METRIC, *METRIC_LABELS], value=PAPER_METRIC, label="Metric", elem_id="sweep-paper-metric"
            )
        plots: list[gr.Plot] = []
        for first in range(0, PAPER_FIGURE_COUNT, 2):
            with gr.Row():
                plots += [
                    gr.Plot(visible=False, elem_id=f"sweep-paper-figure-{index}")
                    for index in range(first, min(first + 2, PAPER_FIGURE_COUNT))
                ]
    return PaperFigures(text, metric, tuple(plots))


def _figure_updates(service: SweepsService, key: str | None, mode: str, metric: str) -> list[Any]:
    """The caption and each of the preset's figures, captioned; the unused plots hidden."""
    preset, figures = paper_figures(service.view(key, mode), metric) if key else (None, [])
    plots = [gr.update(value=figure, label=caption, visible=True) for caption, figure in figures]
    plots += [gr.update(value=None, visible=False)] * (PAPER_FIGURE_COUNT - len(figures))
    return [paper_figures_caption(key, preset), *plots]


def wire_paper_figures(service: SweepsService, panel: PaperFigures, runs: Runs) -> None:
    """`/preset_figures`: drawn for the selected sweep, in the "Score as" mode and the chosen metric."""

    @user_facing
    def preset_figures(key: str | None, mode: str, metric: str) -> list[Any]:
        return _figure_updates(service, key, mode, metric)

    inputs = [runs.selected, runs.view_mode, panel.metric]
    runs.selected.change(preset_figures, inputs, panel.outputs, api_name="preset_figures", show_progress="minimal")
    for control in (runs.view_mode, panel.metric):
        control.input(preset_figures, inputs, panel.outputs, api_visibility="private", show_progress="minimal")


def refresh_paper_figures(service: SweepsService, panel: PaperFigures, runs: Runs, values: dict, seen: dict) -> dict:
    """The figures again when the selected sweep's results, the scoring mode or the metric changed."""
    key, mode, metric = values[runs.selected], values[runs.view_mode], values[panel.metric]
    try:
        signature = (service.signature(key), mode, metric) if key else None
        if signature == seen.get("paper_figures"):
            return {}
        updates = dict(zip(panel.outputs, _figure_updates(service, key, mode, metric), strict=True))
    except (ValueError, OSError) as error:  # the runs section shows the problem in place
        logger.warning("refreshing the paper figures of %s: %s", key, error)
        return {}
    seen["paper_figures"] = signature
    return updates
