"""The Sweeps tab's Per class panel: accuracy per class and alpha, and a confusion matrix at one alpha.

Widgets and wiring only; the numbers come from evaluation.sweep_metrics through ui.sweep_display,
under the tab's data set and prompt filters and its "Score as" mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from naturelm_core.alphas import format_alpha
from ui.errors import user_facing
from ui.sweep_display import class_figures

if TYPE_CHECKING:
    from ui.sweeps_runs import Runs
    from ui.sweeps_service import SweepsService

DEFAULT_TOP_N = 10


@dataclass(frozen=True)
class Classes:
    alpha: gr.Dropdown
    top_n: gr.Number
    table: gr.Dataframe
    heatmap: gr.Plot
    confusion: gr.Plot

    @property
    def outputs(self) -> list[Any]:
        return [self.alpha, self.table, self.heatmap, self.confusion]


def classes_section() -> Classes:
    """The confusion matrix's alpha and size, the per-class table beside its heatmap, then the matrix."""
    with gr.Row():
        alpha = gr.Dropdown(
            [], value=None, allow_custom_value=True, label="Confusion matrix at alpha", elem_id="sweep-class-alpha"
        )
        top_n = gr.Number(DEFAULT_TOP_N, precision=0, minimum=1, label="Classes shown (the rest: other)")
    with gr.Row():
        table = gr.Dataframe(
            label="Accuracy per class", interactive=False, wrap=False, max_height=420, elem_id="sweep-class-table"
        )
        heatmap = gr.Plot(label="Accuracy per class and alpha", elem_id="sweep-class-heatmap")
    confusion = gr.Plot(label="Confusion matrix", elem_id="sweep-confusion")
    return Classes(alpha, top_n, table, heatmap, confusion)


def wire_classes(service: SweepsService, panel: Classes, runs: Runs) -> None:
    """`/class_figures`: redrawn on a new selection, filter, scoring mode, alpha or size."""

    @user_facing
    def per_class(key: str | None, dataset: str, prompt: str, mode: str, alpha: str | None, top_n: float) -> list:
        if not key:
            return [gr.update(choices=[], value=None), None, None, None]
        chosen = next((a for a in _alphas(service, key, mode) if format_alpha(a) == alpha), None)
        drawn = class_figures(service.view(key, mode), dataset, prompt, chosen, int(top_n or DEFAULT_TOP_N))
        choices = [format_alpha(a) for a in drawn.alphas]
        value = format_alpha(drawn.alpha) if drawn.alpha is not None else None
        return [gr.update(choices=choices, value=value), drawn.table, drawn.heatmap, drawn.confusion]

    def _alphas(service: SweepsService, key: str, mode: str) -> list[float]:
        return sorted({score.alpha for score in service.view(key, mode).scores})

    inputs = [runs.selected, runs.dataset_filter, runs.prompt_filter, runs.view_mode, panel.alpha, panel.top_n]
    runs.selected.change(per_class, inputs, panel.outputs, api_name="class_figures", show_progress="minimal")
    for control in (runs.dataset_filter, runs.prompt_filter, runs.view_mode, panel.alpha, panel.top_n):
        control.input(per_class, inputs, panel.outputs, api_visibility="private", show_progress="minimal")
