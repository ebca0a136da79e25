"""The Sweeps tab's Compare panel: two sweeps' (or imports') metric-vs-alpha curves in one figure.

Widgets and wiring only; the overlay is drawn by ui.sweep_display from the service's scored views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.errors import user_facing
from ui.sweep_display import overlay
from ui.sweeps_runs import Runs
from ui.sweeps_service import SweepsService

COMPARE_METRICS = ["accuracy", "f1_weighted", "f1_macro"]


@dataclass(frozen=True)
class Compare:
    a: gr.Dropdown
    b: gr.Dropdown
    metric: gr.Radio
    button: gr.Button
    plot: gr.Plot


def compare_section() -> Compare:
    with gr.Accordion("Compare two sweeps", open=False):
        with gr.Row():
            a = gr.Dropdown(choices=[], allow_custom_value=True, label="Sweep A", elem_id="sweep-compare-a")
            b = gr.Dropdown(choices=[], allow_custom_value=True, label="Sweep B", elem_id="sweep-compare-b")
            metric = gr.Radio(COMPARE_METRICS, value="accuracy", label="Metric", elem_id="sweep-compare-metric")
            button = gr.Button("Overlay", elem_id="sweep-compare")
        plot = gr.Plot(label="Overlay", elem_id="sweep-overlay")
    return Compare(a, b, metric, button, plot)


def wire_compare(service: SweepsService, panel: Compare, runs: Runs) -> None:
    """`/overlay`, scored in the tab's "Score as" mode."""

    @user_facing
    def compare(key_a: str | None, key_b: str | None, metric: str, mode: str) -> Any:
        if not key_a or not key_b:
            raise ValueError("Choose two sweeps to compare.")
        return overlay([service.view(key_a, mode), service.view(key_b, mode)], metric)

    panel.button.click(compare, [panel.a, panel.b, panel.metric, runs.view_mode], panel.plot, api_name="overlay")
