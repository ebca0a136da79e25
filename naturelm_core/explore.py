"""One recording answered across its model windows and a grid of alphas, in as few engine batches as fit.

Why here and not in the UI: this is what `/explore` and `/alpha_scan` compute, and it is the same
for any caller (the app, a script, a test): a recording longer than one model window is answered
window by window, each with its time span, and every window at every alpha is submitted together so
the engine's worker batches them. Plain numbers and text only: the UI draws and words them (ui/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import Levenshtein

from naturelm_core.audio import windows as split_windows
from naturelm_core.requests import GenerationSettings

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

MAX_PROMPT_CHARS = 4000


class PromptError(ValueError):
    """A prompt the model cannot be asked (empty, or longer than the limit); the message says which."""


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
        raise PromptError("The prompt is empty: type a question or pick a preset.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"The prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return prompt


def format_answers(answers: Sequence[WindowAnswer]) -> str:
    """One line per window with its time span; a single-window answer is shown bare (the API's answer text)."""
    if len(answers) == 1:
        return answers[0].text
    return "\n".join(f"[{a.start_s:.1f} s - {a.end_s:.1f} s] {a.text}" for a in answers)


def answer_recording(
    engine: Engine,
    waveform: np.ndarray,
    prompt: str,
    alphas: Sequence[float],
    settings: GenerationSettings,
) -> list[ScanRow]:
    """Every model window of the recording (naturelm_core.audio.windows) at every alpha, submitted together."""
    prompt = validate_prompt(prompt)
    parts = split_windows(waveform)
    rows = [([w.samples], prompt, alpha) for alpha in alphas for w in parts]
    texts = iter(engine.answer_many(rows, settings=settings))
    return [
        ScanRow(alpha=float(alpha), answers=tuple(WindowAnswer(w.start_s, w.end_s, next(texts)) for w in parts))
        for alpha in alphas
    ]


def scan_summary(alphas: Sequence[float], answers: Sequence[str], expected_label: str | None = None) -> list[dict]:
    """Per alpha: the answer, its length, whether it changed from the previous alpha, closeness to a label.

    `label_similarity` is 1 - normalised Levenshtein distance (case-insensitive) to the expected
    label, so a researcher sees where along alpha the answer turns into the species name.
    """
    summary = []
    previous: str | None = None
    for alpha, text in zip(alphas, answers, strict=True):
        entry = {
            "alpha": float(alpha),
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
