"""The Explore tab's figures: the spectrogram, the alpha-scan chart, the detection timeline, the recipe scan.

Figures are built from plain data (a waveform, naturelm_core.explore.scan_summary's rows) so tests
can read their traces back and check values, and the tab only places them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import torchaudio
from plotly.subplots import make_subplots

from naturelm_core.config import SAMPLE_RATE
from naturelm_core.events import Event

SPECTROGRAM_MAX_FRAMES = 2000
EVENT_HOVER = "%{y}<br>%{customdata[0]:.1f}-%{customdata[1]:.1f} s, alpha %{customdata[2]}<extra></extra>"


def log_mel_spectrogram(waveform: np.ndarray, n_mels: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dB [mels, frames], frame times in s, mel centre frequencies in Hz) of a 16 kHz waveform.

    The hop grows with the duration so a 10-minute recording still renders quickly in a browser.
    """
    duration_s = len(waveform) / SAMPLE_RATE
    hop = max(160, int(np.ceil(len(waveform) / SPECTROGRAM_MAX_FRAMES)))
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=1024, hop_length=hop, n_mels=n_mels, f_min=0.0, f_max=SAMPLE_RATE / 2
    )
    power = transform(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)))
    db = 10.0 * torch.log10(power.clamp_min(1e-10))
    db = torch.maximum(db, db.max() - 80.0).numpy()
    times = np.linspace(0.0, duration_s, db.shape[1])
    mel_points = torchaudio.functional.melscale_fbanks(513, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE)
    freqs = np.fft.rfftfreq(1024, 1.0 / SAMPLE_RATE)
    centres = freqs[mel_points.argmax(dim=0).numpy()]
    return db, times, centres


def spectrogram_figure(waveform: np.ndarray) -> go.Figure:
    db, times, centres = log_mel_spectrogram(waveform)
    figure = go.Figure(
        go.Heatmap(z=db, x=times, y=centres, colorscale="Viridis", colorbar={"title": "dB"}, name="log-mel")
    )
    figure.update_layout(
        title="Log-mel spectrogram (16 kHz mono, as the model hears it)",
        xaxis_title="time (s)",
        yaxis_title="frequency (Hz)",
        height=280,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
    )
    return figure


def alpha_scan_figure(summary: Sequence[dict]) -> go.Figure:
    """Answer length and changes vs alpha, plus label similarity when an expected label was given."""
    alphas = [row["alpha"] for row in summary]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=alphas,
            y=[row["answer_chars"] for row in summary],
            mode="lines+markers",
            name="answer length (chars)",
            text=[row["answer"] for row in summary],
            hovertemplate="alpha %{x}<br>%{y} chars<br>%{text}<extra></extra>",
        )
    )
    changed = [row["alpha"] for row in summary if row["changed"]]
    figure.add_trace(
        go.Scatter(
            x=changed,
            y=[row["answer_chars"] for row in summary if row["changed"]],
            mode="markers",
            marker={"symbol": "diamond-open", "size": 14},
            name="answer changed from previous alpha",
        )
    )
    if summary and "label_similarity" in summary[0]:
        figure.add_trace(
            go.Scatter(
                x=alphas,
                y=[row["label_similarity"] for row in summary],
                mode="lines+markers",
                name="similarity to expected label",
                yaxis="y2",
            )
        )
        figure.update_layout(yaxis2={"title": "label similarity", "overlaying": "y", "side": "right", "range": [0, 1]})
    figure.update_layout(
        title="Alpha scan: 0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio",
        xaxis_title="alpha",
        yaxis_title="answer length (chars)",
        height=320,
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def detection_timeline_figure(
    waveform: np.ndarray, events: Sequence[Event], duration_s: float, shown_s: float | None = None
) -> go.Figure:
    """The spectrogram over a timeline row of event bars, on one x axis in seconds, so each event sits
    under the sound it names. `shown_s` is how much of a long recording the spectrogram covers."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    db, times, centres = log_mel_spectrogram(waveform)
    figure.add_trace(
        go.Heatmap(z=db, x=times, y=centres, colorscale="Viridis", showscale=False, name="log-mel"), row=1, col=1
    )
    for label in dict.fromkeys(event.label for event in events):
        mine = [event for event in events if event.label == label]
        figure.add_trace(
            go.Bar(
                x=[event.end_s - event.start_s for event in mine],
                base=[event.start_s for event in mine],
                y=[label] * len(mine),
                orientation="h",
                name=label,
                customdata=[[event.start_s, event.end_s, event.alpha] for event in mine],
                hovertemplate=EVENT_HOVER,
            ),
            row=2,
            col=1,
        )
    partial = shown_s is not None and shown_s < duration_s
    note = f" (spectrogram: first {shown_s / 60:g} min)" if partial else ""
    figure.update_xaxes(range=[0.0, duration_s], row=2, col=1, title_text="time (s)")
    figure.update_yaxes(title_text="frequency (Hz)", row=1, col=1)
    figure.update_yaxes(title_text="events", automargin=True, row=2, col=1)
    figure.update_layout(
        title=f"Detection timeline{note}" + ("" if events else ": no events"),
        height=420,
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
    )
    return figure


def recipe_scan_figure(
    cells: dict, row_name: str, column_name: str, rows: Sequence[str], columns: Sequence[str]
) -> go.Figure:
    """A heatmap of the recipe scan (naturelm_core.explore.recipe_scan_cells): one cell per grid point,
    the answer and the recipe on hover."""
    custom = [
        list(zip(text_row, recipe_row, strict=True))
        for text_row, recipe_row in zip(cells["text"], cells["recipes"], strict=True)
    ]
    figure = go.Figure(
        go.Heatmap(
            z=cells["z"],
            x=list(columns),
            y=list(rows),
            customdata=custom,
            colorscale="Viridis",
            colorbar={"title": cells["colour"]},
            hovertemplate="%{customdata[1]}<br>%{customdata[0]}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"Recipe scan: colour = {cells['colour']}",
        xaxis={"title": column_name, "type": "category"},
        yaxis={"title": row_name, "type": "category"},
        height=360,
    )
    return figure


def candidate_probability_figure(alphas: Sequence[str], probabilities: dict[str, list[float]]) -> go.Figure:
    """Each candidate's probability (restricted to the candidates) at each alpha of the scan, one line each."""
    figure = go.Figure()
    for label, values in probabilities.items():
        figure.add_trace(go.Scatter(x=list(alphas), y=values, mode="lines+markers", name=label))
    figure.update_layout(
        title="Candidate probabilities across alpha",
        xaxis_title="alpha",
        yaxis_title="P(label | one of the candidates)",
        yaxis={"range": [0, 1]},
        height=320,
        legend={"orientation": "h", "y": -0.25},
    )
    return figure
