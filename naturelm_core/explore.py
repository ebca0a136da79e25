"""What the Explore tab asks of the engine, kept out of app.py so the UI only wires events.

A recording longer than one model window is answered window by window (each with its own
timestamps), and all windows, and for an alpha scan all alphas, go to the engine together so the
worker answers them in as few batched calls as fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from naturelm_core.audio import windows as split_windows
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.engine import Engine, GenerationSettings

DEFAULT_ALPHA_GRID = tuple(round(0.1 * i, 2) for i in range(11))
MAX_PROMPT_CHARS = 4000
MAX_SCAN_ALPHAS = 41


@dataclass(frozen=True)
class WindowAnswer:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class ScanRow:
    alpha: float
    answers: tuple[WindowAnswer, ...]

    @property
    def text(self) -> str:
        return format_answers(self.answers)


def validate_prompt(prompt: str) -> str:
    """Empty and absurdly long prompts fail here with a message, not deep in the tokenizer."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("The prompt is empty: type a question or pick a preset.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return prompt


def parse_alpha_grid(text: str) -> list[float]:
    """'0, 0.1, 0.5' -> [0.0, 0.1, 0.5]; duplicates dropped, order kept, range checked."""
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"'{part}' is not a number; write alphas like 0, 0.25, 0.5") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha {part} is outside [0, 1] (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)")
        if value not in values:
            values.append(value)
    if not values:
        raise ValueError("No alphas given; write them comma-separated, e.g. 0, 0.5, 1")
    if len(values) > MAX_SCAN_ALPHAS:
        raise ValueError(f"{len(values)} alphas is more than the {MAX_SCAN_ALPHAS} a scan allows")
    return values


def format_answers(answers: Sequence[WindowAnswer]) -> str:
    """One line per window with its time span; a single-window answer is shown bare."""
    if len(answers) == 1:
        return answers[0].text
    return "\n".join(f"[{a.start_s:.1f} s - {a.end_s:.1f} s] {a.text}" for a in answers)


def answer_recording(
    engine: Engine,
    waveform: np.ndarray,
    prompt: str,
    alphas: Sequence[float],
    settings: GenerationSettings,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
) -> list[ScanRow]:
    """Every window of the recording at every alpha, submitted together so they batch."""
    prompt = validate_prompt(prompt)
    parts = split_windows(waveform, window_s=window_s, hop_s=hop_s)
    rows = [([w.samples], prompt, alpha) for alpha in alphas for w in parts]
    texts = iter(engine.answer_many(rows, settings=settings))
    return [
        ScanRow(alpha=float(alpha), answers=tuple(WindowAnswer(w.start_s, w.end_s, next(texts)) for w in parts))
        for alpha in alphas
    ]


def scan_summary(rows: Sequence[ScanRow], expected_label: str | None = None) -> list[dict]:
    """Per alpha: answer length, whether it changed from the previous alpha, closeness to a label.

    `label_similarity` is 1 - normalised Levenshtein distance (case-insensitive) to the expected
    label, so a researcher sees where along alpha the answer turns into the species name.
    """
    summary = []
    previous: str | None = None
    for row in rows:
        text = row.text
        entry = {
            "alpha": row.alpha,
            "answer": text,
            "answer_chars": len(text),
            "changed": previous is not None and text != previous,
        }
        if expected_label:
            entry["label_similarity"] = Levenshtein.normalized_similarity(
                text.strip().lower(), expected_label.strip().lower()
            )
        summary.append(entry)
        previous = text
    return summary
