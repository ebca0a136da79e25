"""The per-class figures of a sweep: accuracy per class and alpha, and a confusion matrix at one alpha.

Plotly only, drawn from the frames of evaluation.sweep_metrics (per_class_accuracy, confusion_counts),
so tests can read the numbers back from the traces.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from naturelm_core.alphas import format_alpha

ROW_PX = 22  # per class row: enough for a label, so 30 classes still fit on a screen
MIN_HEIGHT = 320


def per_class_heatmap(frame: pd.DataFrame) -> go.Figure:
    """Class (rows, most frequent on top) x alpha (columns), coloured by accuracy, with n in the hover."""
    alphas = [column for column in frame.columns if column not in ("class", "n")]
    labels = [f"{name} (n={n})" for name, n in zip(frame["class"], frame["n"], strict=True)]
    figure = go.Figure(
        go.Heatmap(
            z=frame[alphas].to_numpy().tolist() if alphas else [],
            x=[format_alpha(alpha) for alpha in alphas],
            y=labels,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "accuracy"},
            hovertemplate="%{y}<br>alpha %{x}<br>accuracy %{z:.2f}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Accuracy per class and alpha",
        xaxis_title="alpha",
        yaxis_autorange="reversed",
        height=max(MIN_HEIGHT, 120 + ROW_PX * len(frame)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return figure


def confusion_figure(counts: pd.DataFrame, alpha: float | None) -> go.Figure:
    """True class (rows) x answer (columns) counts at one alpha; the diagonal is the correct answers."""
    figure = go.Figure(
        go.Heatmap(
            z=counts.to_numpy().tolist(),
            x=list(counts.columns),
            y=list(counts.index),
            colorscale="Blues",
            text=counts.to_numpy().tolist(),
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>answered %{x}<br>%{z} answers<extra></extra>",
        )
    )
    where = f"alpha {format_alpha(alpha)}" if alpha is not None else "no answers yet"
    figure.update_layout(
        title=f"Confusion matrix at {where}",
        xaxis_title="answered (scored class)",
        yaxis_title="true class",
        yaxis_autorange="reversed",
        height=max(MIN_HEIGHT, 160 + ROW_PX * len(counts)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return figure
