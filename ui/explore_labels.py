"""The Explore tab's candidate labels (issue 19): how likely each candidate is, beside the generated answer.

Widgets and wiring only: naturelm_core.explore scores the recording over the candidates (one batched
engine call), ui.text words the match, ui.explore_figures draws the scan chart. `/score_labels` is
public: (audio, prompt, candidates text, alpha[, recipe]) -> a table of LABEL_COLUMNS sorted by
probability. Empty candidates mean no likelihood work: an empty table, no chart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from naturelm_core.alphas import format_alpha, parse_alpha_grid
from naturelm_core.events import matching_candidate, parse_candidates
from naturelm_core.explore import LABEL_COLUMNS, answer_point, probabilities_by_label, score_recording
from ui.errors import user_facing
from ui.explore_figures import candidate_probability_figure
from ui.explore_recording import recording_for_answer
from ui.text import candidate_match_markdown
from ui.zero_gpu import on_gpu

if TYPE_CHECKING:
    from naturelm_core.engine import Engine


def label_outputs() -> tuple[gr.Markdown, gr.Dataframe]:
    """Where the match line and the candidates table go, under the answer."""
    match = gr.Markdown(elem_id="candidate-match")
    table = gr.Dataframe(headers=LABEL_COLUMNS, label="Candidates (most probable first)", elem_id="candidates")
    return match, table


def score_labels_handler(engine: Engine) -> Any:
    """`/score_labels`, closing over the app's engine."""

    @user_facing
    @on_gpu
    def score_labels(
        audio_path: str | None, prompt: str, candidates: str, alpha: float, recipe: str = ""
    ) -> pd.DataFrame:
        labels = parse_candidates(candidates)
        if not labels:
            return pd.DataFrame(columns=LABEL_COLUMNS)
        point = answer_point(alpha, recipe)
        [scores] = score_recording(engine, recording_for_answer(audio_path), prompt, labels, [point])
        return pd.DataFrame(scores.table(), columns=LABEL_COLUMNS)

    return score_labels


@user_facing
def match_line(answer: str, candidates: str) -> str:
    """The generated answer checked against the candidates (private: the page's line under the answer)."""
    labels = parse_candidates(candidates)
    return candidate_match_markdown(answer or "", matching_candidate(answer or "", labels), labels)


def scan_chart_handler(engine: Engine) -> Any:
    """The candidates' probabilities across the scan's alphas: one score_labels call, one row per alpha."""

    @user_facing
    @on_gpu
    def candidate_scan(audio_path: str | None, prompt: str, alphas: str, candidates: str) -> Any:
        labels = parse_candidates(candidates)
        if not labels:
            return None
        grid = parse_alpha_grid(alphas)
        scores = score_recording(engine, recording_for_answer(audio_path), prompt, labels, grid)
        return candidate_probability_figure([format_alpha(point) for point in grid], probabilities_by_label(scores))

    return candidate_scan
