"""The Explore tab's recipe scan (issue 18): one recording over a grid of two merge-recipe knobs, as a heatmap.

Widgets and wiring only: naturelm_core.explore builds the grid (ramp a0 x a1, alpha x rank, or alpha x
one projection off) and answers it in ONE batched engine call; ui.explore_figures draws it. `/recipe_scan`
is public: (audio, prompt, kind, first values, second values[, expected label, beams, max new tokens])
-> a table with one row per grid point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from naturelm_core.explore import (
    SCAN_KINDS,
    answer_recipe_grid,
    parse_knob_values,
    recipe_grid,
    recipe_scan_cells,
)
from naturelm_core.requests import GenerationSettings
from ui.errors import user_facing
from ui.explore_figures import recipe_scan_figure
from ui.explore_recording import recording_for_answer
from ui.zero_gpu import on_gpu

if TYPE_CHECKING:
    from naturelm_core.engine import Engine
    from ui.explore_tab import Question

SCAN_COLUMNS = ["row", "column", "recipe", "answer"]


def recipe_scan_section(engine: Engine, question: Question) -> None:
    """The scan's knobs, its button, and the heatmap with its table."""
    with gr.Accordion("Recipe scan: two merge-recipe knobs over one recording, one batched call", open=False):
        with gr.Row():
            kind = gr.Dropdown(choices=[(label, key) for key, label in SCAN_KINDS.items()], value="ramp", label="Scan")
            first = gr.Textbox(value="0, 0.5, 1", label="rows: a0, or alpha (comma-separated)")
            second = gr.Textbox(value="0, 0.5, 1", label="columns: a1, or ranks (unused for 'projection off')")
            expected = gr.Textbox(value="", label="Expected label (optional: colour by similarity)")
        run = gr.Button("Scan recipes", elem_id="recipe-scan")
        heatmap = gr.Plot(label="Recipe scan", elem_id="recipe-heatmap")
        table = gr.Dataframe(headers=SCAN_COLUMNS, label="Answers by grid point", wrap=True)
    inputs = [question.audio, question.prompt, kind, first, second, expected, question.num_beams]
    inputs.append(question.max_new_tokens)
    run.click(_scan_handler(engine), inputs, [table, heatmap], api_name="recipe_scan")


def _scan_handler(engine: Engine) -> Any:
    @user_facing
    @on_gpu
    def recipe_scan(
        audio_path: str | None,
        prompt: str,
        kind: str,
        first: str,
        second: str = "",
        expected_label: str = "",
        num_beams: int = 2,
        max_new_tokens: int = 100,
    ) -> tuple[pd.DataFrame, Any]:
        grid = recipe_grid(kind, parse_knob_values(first, "rows"), _columns(kind, second))
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        answers = answer_recipe_grid(engine, recording_for_answer(audio_path), prompt, grid, settings)
        cells = recipe_scan_cells(grid, answers, expected_label)
        rows = [
            (row, column, cells["recipes"][i][j], answers[i][j])
            for i, row in enumerate(grid.rows)
            for j, column in enumerate(grid.columns)
        ]
        figure = recipe_scan_figure(cells, grid.row_name, grid.column_name, grid.rows, grid.columns)
        return pd.DataFrame(rows, columns=SCAN_COLUMNS), figure

    return recipe_scan


def _columns(kind: str, text: str) -> list[float]:
    """The column knob's values; the projection-off scan has fixed columns and ignores the box."""
    return [] if kind == "module_off" else parse_knob_values(text, "columns")
