"""One recording answered across its model windows and a grid of alphas, in as few engine batches as fit.

Why here and not in the UI: this is what `/explore` and `/alpha_scan` compute, and it is the same
for any caller (the app, a script, a test): a recording longer than one model window is answered
window by window, each with its time span, and every window at every alpha is submitted together so
the engine's worker batches them. Plain numbers and text only: the UI draws and words them (ui/).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import Levenshtein

from naturelm_core.alphas import (
    MERGE_MODULES,
    GridPoint,
    MergeRecipe,
    check_alpha,
    check_grid_point,
    format_alpha,
    parse_recipe_text,
)
from naturelm_core.audio import MAX_DURATION_S
from naturelm_core.audio import windows as split_windows
from naturelm_core.audio_stream import open_windows
from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS
from naturelm_core.events import DEFAULT_ABSENT_ANSWERS
from naturelm_core.label_scores import LabelScores
from naturelm_core.recipes import RecipeError
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
    alpha: GridPoint  # a float, or a merge recipe where one was asked
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
        ScanRow(alpha=_as_point(alpha), answers=tuple(WindowAnswer(w.start_s, w.end_s, next(texts)) for w in parts))
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


def _as_point(alpha: object) -> GridPoint:
    return alpha if isinstance(alpha, MergeRecipe) else float(alpha)


# --- the merge recipe that may replace the alpha slider (issue 18)


def answer_point(alpha: float, recipe_text: str | None = None) -> GridPoint:
    """What one answer is merged by: the slider's alpha, or the typed recipe when one is given.

    Why the recipe wins: a researcher who typed one wants exactly it; the slider stays the default
    so the plain `/explore` call is unchanged. The engine checks the recipe against the model's layers.
    """
    text = (recipe_text or "").strip()
    if not text:
        return check_alpha(alpha)
    recipes = parse_recipe_text(text)
    if len(recipes) != 1:
        raise RecipeError(f"the merge recipe field takes one JSON object, got a list of {len(recipes)}")
    return check_grid_point(recipes[0], name="merge recipe")


# --- the recipe scan: one recording over a grid of two recipe knobs, in one batched call

SCAN_KINDS = {
    "ramp": "layer ramp: start a0 (first layer) x end a1 (last layer)",
    "rank": "alpha x LoRA rank kept (top singular directions)",
    "module_off": "alpha x one projection switched off",
}
MAX_RECIPE_SCAN_POINTS = 121


@dataclass(frozen=True)
class RecipeGrid:
    """A two-knob grid: `points[i][j]` is merged by row knob `rows[i]` and column knob `columns[j]`."""

    kind: str
    row_name: str
    column_name: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    points: tuple[tuple[GridPoint, ...], ...]

    def flat(self) -> list[GridPoint]:
        return [point for row in self.points for point in row]


def parse_knob_values(text: str, name: str) -> list[float]:
    """A comma-separated list of numbers for one knob ('0, 0.5, 1'); refused with the knob's name."""
    values = []
    for part in (text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise RecipeError(f"{name}: {part.strip()!r} is not a number; write e.g. 0, 0.5, 1") from None
    if not values:
        raise RecipeError(f"{name}: no values; write e.g. 0, 0.5, 1")
    return list(dict.fromkeys(values))


def recipe_grid(kind: str, first: Sequence[float], second: Sequence[float] = ()) -> RecipeGrid:
    """The grid of merge points for one scan kind (see SCAN_KINDS), each point checked like any alpha.

    ramp: rows a0 (the first layer's multiplier), columns a1 (the last layer's); rank: rows alpha,
    columns the rank kept; module_off: rows alpha, columns 'none' then each projection set to 0
    (`second` is unused). A plain recipe becomes its float, so the cells compare with the alpha scan.
    """
    if kind not in SCAN_KINDS:
        raise RecipeError(f"unknown recipe scan {kind!r}; choose from {', '.join(SCAN_KINDS)}")
    builders = {"ramp": _ramp_grid, "rank": _rank_grid, "module_off": _module_off_grid}
    grid = builders[kind](list(first), list(second))
    size = len(grid.rows) * len(grid.columns)
    if size > MAX_RECIPE_SCAN_POINTS:
        raise RecipeError(f"{size} grid points is more than the {MAX_RECIPE_SCAN_POINTS} one scan allows")
    return grid


def _checked(recipe: dict, row: str, column: str) -> GridPoint:
    return check_grid_point(recipe, name=f"grid point ({row}, {column})")


def _ramp_grid(starts: list[float], stops: list[float]) -> RecipeGrid:
    points = tuple(
        tuple(_checked({"layers": f"linear:{a0}:{a1}"}, f"a0 {a0:g}", f"a1 {a1:g}") for a1 in stops) for a0 in starts
    )
    return RecipeGrid("ramp", "a0 (first layer)", "a1 (last layer)", _labels(starts), _labels(stops), points)


def _rank_grid(alphas: list[float], ranks: list[float]) -> RecipeGrid:
    if any(rank != int(rank) or rank < 1 for rank in ranks):
        raise RecipeError(f"ranks must be whole numbers from 1, got {', '.join(f'{r:g}' for r in ranks)}")
    points = tuple(
        tuple(_checked({"alpha": a, "rank": int(r)}, f"alpha {a:g}", f"rank {r:g}") for r in ranks) for a in alphas
    )
    return RecipeGrid("rank", "alpha", "rank kept", _labels(alphas), _labels(ranks), points)


def _module_off_grid(alphas: list[float], _unused: list[float]) -> RecipeGrid:
    columns = ("none", *MERGE_MODULES)
    points = tuple(
        tuple(
            _checked({"alpha": a, "modules": {m: 0.0}} if m != "none" else {"alpha": a}, f"alpha {a:g}", m)
            for m in columns
        )
        for a in alphas
    )
    return RecipeGrid("module_off", "alpha", "projection off", _labels(alphas), columns, points)


def _labels(values: Sequence[float]) -> tuple[str, ...]:
    return tuple(f"{value:g}" for value in values)


def answer_recipe_grid(
    engine: Engine, waveform: np.ndarray, prompt: str, grid: RecipeGrid, settings: GenerationSettings
) -> list[list[str]]:
    """Every grid point's answer (windows joined as `/explore` shows them), from ONE answer_recording call."""
    rows = iter(answer_recording(engine, waveform, prompt, grid.flat(), settings))
    return [[next(rows).text for _ in grid.columns] for _ in grid.rows]


def recipe_scan_cells(grid: RecipeGrid, answers: Sequence[Sequence[str]], expected_label: str | None = None) -> dict:
    """Plain numbers for the heatmap: colour = similarity to the expected label when given, else answer length."""
    flat = [text for row in answers for text in row]
    by_label = bool(expected_label and expected_label.strip())
    summary = scan_summary(range(len(flat)), flat, expected_label if by_label else None)
    values = [entry["label_similarity"] if by_label else entry["answer_chars"] for entry in summary]
    width = len(grid.columns)
    return {
        "z": [values[i * width : (i + 1) * width] for i in range(len(grid.rows))],
        "text": [list(row) for row in answers],
        "recipes": [[format_alpha(point) for point in row] for row in grid.points],
        "colour": "similarity to the expected label" if by_label else "answer length (chars)",
    }


# --- long recordings: what the page can show without decoding hours of audio

PREVIEW_S = MAX_DURATION_S  # the spectrogram of a longer recording shows its first 10 minutes


def parse_absent_answers(text: str | None) -> tuple[str, ...]:
    """The "answers meaning nothing" list typed one per line or comma-separated; empty = the default list."""
    names = [part.strip() for line in (text or "").splitlines() for part in line.split(",") if part.strip()]
    return tuple(names) if names else DEFAULT_ABSENT_ANSWERS


def preview_waveform(path: str | os.PathLike, max_s: float = PREVIEW_S) -> tuple[np.ndarray, float]:
    """(the first `max_s` seconds at 16 kHz mono, the recording's duration from its header).

    Why streamed: a 2-hour file would take gigabytes decoded whole; `open_windows` reads it window by
    window with the same resampling as `load_audio`, and reading stops at `max_s`.
    """
    pieces = []
    with open_windows(path, WINDOW_SECONDS, WINDOW_SECONDS) as stream:
        for window in stream:
            if window.start_s >= max_s:
                break
            pieces.append(window.samples[: round((window.end_s - window.start_s) * SAMPLE_RATE)])
        duration_s = stream.duration_s
    return np.concatenate(pieces), duration_s


# --- closed-set label scores beside the answer (issue 19)

LABEL_COLUMNS = ["label", "probability", "log_likelihood", "normalized_probability"]


@dataclass(frozen=True)
class CandidateScores:
    """One merge point's scores over the candidates, averaged over the recording's windows.

    Why averaged: a long recording is answered window by window, but a table beside the answer needs
    one number per label; with one window (the usual case) these are that window's LabelScores.
    """

    alpha: GridPoint
    probabilities: dict[str, float]
    log_likelihoods: dict[str, float]
    normalized_probabilities: dict[str, float]

    def table(self) -> list[tuple[str, float, float, float]]:
        """Rows of LABEL_COLUMNS, most probable first (the given order among equals)."""
        rows = [
            (label, p, self.log_likelihoods[label], self.normalized_probabilities[label])
            for label, p in self.probabilities.items()
        ]
        return sorted(rows, key=lambda row: -row[1])


def score_recording(
    engine: Engine, waveform: np.ndarray, prompt: str, labels: Sequence[str], alphas: Sequence[GridPoint]
) -> list[CandidateScores]:
    """Every window at every alpha scored over `labels` in ONE engine.score_labels call; [] without labels.

    Why empty labels return []: no candidate list means no likelihood work at all (nothing is shown).
    LabelError (a repeated, empty or too long label) is raised before any row is queued.
    """
    if not labels:
        return []
    prompt = validate_prompt(prompt)
    parts = split_windows(waveform)
    rows = [([w.samples], prompt, alpha) for alpha in alphas for w in parts]
    scores = engine.score_labels(rows, list(labels))
    n = len(parts)
    return [_mean_scores(_as_point(alpha), scores[i * n : (i + 1) * n]) for i, alpha in enumerate(alphas)]


def _mean_scores(alpha: GridPoint, windows: Sequence[LabelScores]) -> CandidateScores:
    def mean(field: str) -> dict[str, float]:
        first = getattr(windows[0], field)
        return {label: float(np.mean([getattr(w, field)[label] for w in windows])) for label in first}

    return CandidateScores(alpha, mean("probabilities"), mean("log_likelihoods"), mean("normalized_probabilities"))


def probabilities_by_label(scores: Sequence[CandidateScores]) -> dict[str, list[float]]:
    """Each candidate's probability at each alpha of a scan, in the scan's order: what its chart draws."""
    if not scores:
        return {}
    return {label: [s.probabilities[label] for s in scores] for label in scores[0].probabilities}
