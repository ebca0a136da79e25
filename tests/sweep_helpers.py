"""Data, specs and a backend shared by the sweep tests: synthetic BEANS-Zero with one tone per label, greedy
short answers, and a backend that answers at once."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.icl import ContextBudget
from evaluation.sweep import SweepSpec
from evaluation.synthetic import SyntheticRow, write_synthetic_beans_zero

WATKINS_LABELS = [f"Whale species {i:02d}" for i in range(12)]
# 12 watkins rows with 12 labels, so every recording is a different tone: 12 distinct recordings.
ROWS = {"watkins": 12, "esc50": 8}


def write_sweep_data(folder: Path, unreadable_esc50: int = 2) -> list[SyntheticRow]:
    return write_synthetic_beans_zero(
        folder, ROWS, labels={"watkins": WATKINS_LABELS}, unreadable={"esc50": unreadable_esc50}
    )


def spec_dict(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """2 prompts x 3 alphas x 12 watkins samples = 72 items, greedy and short so a sweep takes about a second."""
    spec = {
        "name": "tiny watkins",
        "source": "parquet",
        "path": str(data_dir),
        "subsets": ["watkins"],
        "prompts": ["common", "scientific"],
        "alphas": [0.0, 0.5, 1.0],
        "num_beams": 1,
        "max_new_tokens": 6,
        "scoring_mode": "official",
    }
    spec.update(overrides)
    return spec


def item_predictions(records: list[dict[str, Any]]) -> dict[tuple, str]:
    """(dataset, id, prompt, alpha) -> prediction; fails on a duplicate item."""
    found: dict[tuple, str] = {}
    for record in records:
        key = (record["dataset"], record["id"], record["prompt_name"], record["alpha"])
        assert key not in found, f"item written twice: {key}"
        found[key] = record["prediction"]
    return found


class ToneBackend:
    """Answers at once with the dominant frequency of the window: fast, yet each answer depends on the audio.

    `budget` stands for the context of a model behind it (none by default: no prompt is checked).
    """

    inflight_rows = 2

    def __init__(self, budget: ContextBudget | None = None) -> None:
        self.budget = budget
        self.rows = 0

    def context_budget(self, max_context_tokens: int | None) -> ContextBudget | None:
        return None if self.budget is None else self.budget.with_limit(max_context_tokens)

    def submit_group(self, rows, settings):
        futures = []
        for windows, _prompt, _alpha in rows:
            spectrum = np.abs(np.fft.rfft(windows[-1]))
            future: Future = Future()
            future.set_result(f"{np.argmax(spectrum) * 16_000 / len(windows[-1]):.0f}")
            futures.append(future)
        self.rows += len(rows)
        return futures


class RecordingQueue:
    """Stands in for a sweep queue (the local one, or the Ray pool's): keeps the specs it is handed, starts nothing."""

    def __init__(self) -> None:
        self.specs: list[SweepSpec] = []

    def submit(self, spec: SweepSpec) -> str:
        self.specs.append(spec)
        return spec.sweep_id
