"""The Sweeps tab's tables: the sweeps in the runs folder, and what each paper experiment costs.

DataFrames of display strings (progress in %, durations as h:mm:ss), built from plain data, so
gradio_client sees exactly what the page shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from evaluation.presets import list_presets
from evaluation.sweep import SweepState, SweepStatus
from evaluation.sweep_forms import optional_count
from naturelm_core.alphas import format_alpha
from ui.text import format_duration

if TYPE_CHECKING:
    from ui.sweeps_service import MeasuredRate

TABLE_COLUMNS = ["sweep", "name", "state", "done", "total", "progress", "rate", "ETA", "message"]
PRESET_COLUMNS = [
    "preset",
    "experiment",
    "figures",
    "answers",
    "time",
    "answers at the sample limit",
    "time at the sample limit",
]


def sweeps_table(statuses: Sequence[SweepStatus]) -> pd.DataFrame:
    """One row per sweep, newest first: state, counts, rate and ETA (the last two only while it runs)."""
    records = [
        {
            "sweep": s.sweep_id,
            "name": s.name,
            "state": s.state.value,
            "done": s.done,
            "total": s.total,
            "progress": f"{100 * s.fraction:.0f}%",
            "rate": f"{s.rate_per_s:.2f}/s" if s.state is SweepState.RUNNING and s.rate_per_s else "-",
            "ETA": format_duration(s.eta_s) if s.state is SweepState.RUNNING else "-",
            "message": s.message,
        }
        for s in statuses
    ]
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)


def _duration_cell(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(seconds)


def presets_table(rate: MeasuredRate | None, limit: float | None = None) -> pd.DataFrame:
    """One row per preset: the answers of the full experiment on BEANS-Zero and at the form's sample limit,
    and how long each takes at the measured rate."""
    cap = optional_count(limit, "sample limit")
    per_s = rate.answers_per_s if rate is not None else None
    full, capped = list_presets(per_s), list_presets(per_s, cap)
    records = [
        {
            "preset": whole["key"],
            "experiment": whole["title"],
            "figures": whole["figures"],
            "answers": whole["answers"],
            "time": _duration_cell(whole["duration_s"]),
            "answers at the sample limit": part["answers"],
            "time at the sample limit": _duration_cell(part["duration_s"]),
        }
        for whole, part in zip(full, capped, strict=True)
    ]
    return pd.DataFrame.from_records(records, columns=PRESET_COLUMNS)


def alpha_header(alpha: float) -> str:
    """A short column header ('α=0.5'): long ones wrap onto several lines and push the table off screen."""
    return f"α={format_alpha(alpha)}"


def per_class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """evaluation.sweep_metrics.per_class_accuracy as display strings: one row per class, accuracy in % per alpha."""
    alphas = [column for column in frame.columns if column not in ("class", "n")]
    shown = frame[["class", "n"]].copy()
    for alpha in alphas:
        shown[alpha_header(alpha)] = [("-" if pd.isna(v) else f"{100 * v:.0f}%") for v in frame[alpha]]
    return shown
