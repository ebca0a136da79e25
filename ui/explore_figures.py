"""The Explore tab's figures: the recording's spectrogram and the alpha-scan chart.

Figures are built from plain data (a waveform, naturelm_core.explore.scan_summary's rows) so tests
can read their traces back and check values, and the tab only places them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import torchaudio

from naturelm_core.config import SAMPLE_RATE

SPECTROGRAM_MAX_FRAMES = 2000


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
